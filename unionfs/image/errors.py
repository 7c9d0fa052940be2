"""The image manager's errors: each one is a single line for the user."""

from __future__ import annotations


class ImageError(Exception):
    """A failure the user is told about in one line (``pyunion: error: ...``, exit 1)."""


class NotFound(ImageError):
    """No image, container or blob of that name."""


class Conflict(ImageError):
    """The request contradicts the store's state (an image in use, an ambiguous prefix)."""
