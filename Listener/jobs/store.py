"""What every job store is: the interface the listener uses, and the error a store reports."""

from __future__ import annotations

__all__ = ["JobStoreError"]


class JobStoreError(OSError):
    """The job store cannot be opened or written (the message names the file, never a secret)."""
