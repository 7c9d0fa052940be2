"""``.containerignore`` / ``.dockerignore``: which context files COPY and ADD cannot see.

docker's rules (its ``patternmatcher``): one pattern a line, ``#`` lines and blank lines
ignored, each pattern cleaned (``./a/../b`` is ``b``, a leading ``/`` dropped); ``*`` matches
within one path element, ``?`` one character, ``[...]`` a class, ``**`` any number of
elements (none included); a pattern that matches a directory excludes everything below it;
``!pattern`` re-includes what it matches; the last pattern that matches a path decides.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

IGNORE_FILES = (".containerignore", ".dockerignore")


@dataclass
class _Pattern:
    text: str
    regex: re.Pattern[str]
    exclusion: bool  # a "!" pattern: matching paths are included again


def _translate(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1:end]
                if body.startswith("!") or body.startswith("^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


class IgnoreRules:
    def __init__(self, lines: list[str]) -> None:
        self.patterns: list[_Pattern] = []
        for line in lines:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            exclusion = text.startswith("!")
            if exclusion:
                text = text[1:].strip()
            text = posixpath.normpath(text).lstrip("/") or "."
            if text == ".":
                continue
            self.patterns.append(_Pattern(text, _translate(text), exclusion))

    @classmethod
    def for_context(cls, context: str) -> IgnoreRules:
        """The rules of ``.containerignore``, else ``.dockerignore``, in the context."""
        for name in IGNORE_FILES:
            path = os.path.join(context, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    return cls(f.read().splitlines())
        return cls([])

    @property
    def has_exclusions(self) -> bool:
        return any(p.exclusion for p in self.patterns)

    def ignored(self, rel: str) -> bool:
        """Whether the context path ``rel`` (``a/b/c``) is ignored."""
        if not self.patterns:
            return False
        parents = []
        parts = rel.split("/")
        for n in range(1, len(parts)):
            parents.append("/".join(parts[:n]))
        result = False
        for pattern in self.patterns:
            matched = pattern.regex.match(rel) is not None or any(
                pattern.regex.match(parent) for parent in parents)
            if matched:
                result = not pattern.exclusion
        return result

    def may_include_below(self, rel: str) -> bool:
        """Whether an ignored directory may still hold re-included paths (a ``!`` pattern
        that reaches below it): then the walk must go in."""
        prefix = rel + "/"
        for pattern in self.patterns:
            if pattern.exclusion and (pattern.text.startswith(prefix) or "*" in pattern.text
                                      or "?" in pattern.text or "[" in pattern.text):
                return True
        return False
