"""Image references as docker normalises them.

``busybox`` is ``docker.io/library/busybox:latest``; ``images`` shows the short form again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from unionfs.image.errors import ImageError

DEFAULT_DOMAIN = "docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,}")
_DOMAIN_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?)+(?::[0-9]+)?"
                        r"|\[[0-9a-fA-F:]+\](?::[0-9]+)?")


@dataclass(frozen=True)
class Reference:
    """A normalised reference: ``domain/path`` plus a tag and/or a digest."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """The full repository name, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def name(self) -> str:
        """The full ``repository:tag`` (or ``@digest``) string stored in the database."""
        if self.digest and not self.tag:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag or DEFAULT_TAG}"

    @property
    def short_repository(self) -> str:
        """The repository as docker shows it: no ``docker.io/`` and no ``library/``."""
        return shorten_repository(self.repository)

    @property
    def short_name(self) -> str:
        return f"{self.short_repository}:{self.tag or DEFAULT_TAG}"

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.domain, self.path, tag, None)


def shorten_repository(repository: str) -> str:
    if repository.startswith(DEFAULT_DOMAIN + "/" + OFFICIAL_PREFIX):
        return repository[len(DEFAULT_DOMAIN + "/" + OFFICIAL_PREFIX):]
    if repository.startswith(DEFAULT_DOMAIN + "/"):
        return repository[len(DEFAULT_DOMAIN + "/"):]
    return repository


def split_name(name: str) -> tuple[str, str]:
    """A stored ``repository:tag`` name split into its repository and tag."""
    repository, _, tag = name.rpartition(":")
    return repository, tag


def parse(text: str, *, default_tag: bool = True) -> Reference:
    """Parses and normalises a reference; ImageError if it is not one."""
    if not text or text != text.strip():
        raise ImageError(f"invalid reference format: {text!r}")
    remainder, digest = text, None
    if "@" in remainder:
        remainder, _, digest = remainder.partition("@")
        if not _DIGEST_RE.fullmatch(digest):
            raise ImageError(f"invalid reference format: {text!r} (bad digest)")
    tag = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise ImageError(f"invalid reference format: {text!r} (bad tag)")
    domain, path = _split_domain(remainder)
    if not _DOMAIN_RE.fullmatch(domain) or not _PATH_RE.fullmatch(path):
        raise ImageError(f"invalid reference format: {text!r}"
                         + (" (repository names must be lowercase)"
                            if path.lower() != path else ""))
    if len(f"{domain}/{path}") > 255:
        raise ImageError(f"invalid reference format: {text!r} (longer than 255 characters)")
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        return first, rest
    if first == "docker.io" and sep:
        name = rest
    path = name
    if "/" not in path:
        path = OFFICIAL_PREFIX + path
    return DEFAULT_DOMAIN, path


def looks_like_reference(text: str) -> bool:
    try:
        parse(text)
    except ImageError:
        return False
    return True
