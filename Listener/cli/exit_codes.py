"""The command's exit codes, and the error that ends it with one."""

from __future__ import annotations

from ..errors import ListenerError

__all__ = ["CliError", "EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CliError(ListenerError):
    """A failure the command reports in one line (no traceback) before exiting with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
