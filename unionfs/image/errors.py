"""The image manager's errors: each one is a single line for the user."""

from __future__ import annotations


class ImageError(Exception):
    """A failure the user is told about in one line (``pyunion: error: ...``).

    The command then exits with its failure status (1; 125 for ``run``), or with
    ``exit_status`` where the error has one of its own."""

    def __init__(self, message: str = "", exit_status: int | None = None) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class NotFound(ImageError):
    """No image, container or blob of that name."""


class Conflict(ImageError):
    """The request contradicts the store's state (an image in use, an ambiguous prefix)."""


class StartFailed(ImageError):
    """The OCI runtime could not start a container's process. ``exit_status`` is docker's 127
    when the command does not exist, 126 when it cannot be invoked, else None."""
