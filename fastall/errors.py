"""User-facing errors: each carries a one-line message and an exit code; the CLI never shows a traceback."""

from __future__ import annotations


class FastallError(Exception):
    """An error the user can act on. ``str(err)`` is the one-line message."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CacheError(FastallError):
    """A feature cache that is missing, corrupt, incomplete or made with other settings."""


class WeightsUnavailable(FastallError):
    """Backbone weights that cannot be loaded (offline with an empty torch cache, bad file)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)
