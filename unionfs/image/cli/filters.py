"""``--filter KEY=VALUE`` as docker reads it: filters of one key are alternatives (any may
match), filters of different keys must all match."""

from __future__ import annotations

import fnmatch
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


def reference_matches(name: str, pattern: str) -> bool:
    """docker's ``reference=`` glob, against the short name, with ``:latest`` added to a
    pattern without a tag, and against the repository alone."""
    repository, _, tag = name.rpartition(":")
    return (fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(repository, pattern)
            or ("/" not in pattern and fnmatch.fnmatchcase(repository.rsplit("/", 1)[-1],
                                                           pattern.partition(":")[0])
                and (":" not in pattern or fnmatch.fnmatchcase(tag, pattern.partition(":")[2]))))


def truth(value: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise ImageError(f"invalid filter value {value!r}: true or false")
