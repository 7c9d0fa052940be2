"""``--filter KEY=VALUE`` as docker reads it: filters of one key are alternatives (any may
match), filters of different keys must all match."""

from __future__ import annotations

import re
from collections.abc import Callable

from unionfs.image.errors import ImageError


def parse_filters(items: list[str], known: tuple[str, ...]) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ImageError(f"bad format of filter {item!r} (expected name=value)")
        if key not in known:
            raise ImageError(f"invalid filter {key!r} (one of: {', '.join(known)})")
        filters.setdefault(key, []).append(value)
    return filters


def matches(filters: dict[str, list[str]],
            tests: dict[str, Callable[[str], bool]]) -> bool:
    """Every key's filters tested with ``tests[key]``: one of each key must pass."""
    return all(any(tests[key](value) for value in values) for key, values in filters.items())


def label_matches(labels: dict[str, str] | None, wanted: str) -> bool:
    """``label=KEY`` (present) or ``label=KEY=VALUE``."""
    labels = labels or {}
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)


def _path_match(pattern: str, text: str) -> bool:
    """Go's path.Match: ``*`` and ``?`` do not cross ``/``."""
    regex = ""
    for part in re.split(r"(\*|\?|\[[^\]]*\])", pattern):
        if part == "*":
            regex += "[^/]*"
        elif part == "?":
            regex += "[^/]"
        elif part.startswith("[") and part.endswith("]") and len(part) > 2:
            regex += "[" + part[1:-1].replace("!", "^", 1) if part[1] == "!" else part
            if part[1] == "!":
                regex += "]"
        else:
            regex += re.escape(part)
    return re.fullmatch(regex, text) is not None


def reference_matches(name: str, pattern: str) -> bool:
    """docker's ``reference=``: the pattern against the short name (``app:2``), then against
    the repository alone (``app``); a pattern without ``/`` also against the last component
    (``busybox:1.35`` of ``host:5000/library/busybox:1.35``), as podman has it."""
    repository = name.rpartition(":")[0]
    if _path_match(pattern, name) or _path_match(pattern, repository):
        return True
    # a pattern without a slash also matches the last component (podman's reading)
    return "/" not in pattern and "/" in repository and reference_matches(
        name.rsplit("/", 1)[1], pattern)


def truth(value: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise ImageError(f"invalid filter value {value!r}: true or false")
