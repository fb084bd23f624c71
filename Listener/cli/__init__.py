"""The ``mqtt-listener`` command: run, check-config, publish, and the supervisor of ``--workers`` processes."""

from .command import main

__all__ = ["main"]
