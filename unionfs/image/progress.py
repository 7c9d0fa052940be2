"""What long work reports as it goes; the CLI draws bars or lines from it."""

from __future__ import annotations


class Progress:
    """Called from worker threads; the base class reports nothing."""

    def layer_started(self, diff_id: str, total: int | None) -> None: ...
    def layer_advanced(self, diff_id: str, nbytes: int) -> None: ...
    def layer_done(self, diff_id: str, status: str) -> None: ...
