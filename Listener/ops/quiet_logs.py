"""Third-party loggers that are quiet (WARNING and above) unless the application configured them.

amqtt and the ``transitions`` state machine it uses log at INFO for every state change, every client
an embedded broker accepts and every plugin loaded: dozens of lines per job under
``logging.basicConfig(level=logging.INFO)``, as the manual's examples configure logging. Importing
``Listener`` sets the level of those loggers to WARNING, but only where it is still ``NOTSET`` (nobody
chose one); their warnings and errors still show.

To see their INFO and DEBUG lines again, give them a level yourself, before or after importing
``Listener`` (``logging.getLogger("amqtt").setLevel(logging.DEBUG)``), or call
:func:`restore_third_party_loggers`, which puts back ``NOTSET`` on the loggers this module quietened.
"""

from __future__ import annotations

import logging
from typing import Set, Tuple

__all__ = ["NOISY_LOGGERS", "quiet_third_party_loggers", "restore_third_party_loggers"]

#: Logger names quietened by default (their children, such as ``amqtt.broker``, follow them).
NOISY_LOGGERS: Tuple[str, ...] = ("amqtt", "transitions")

_quietened: Set[str] = set()


def quiet_third_party_loggers() -> Tuple[str, ...]:
    """Set :data:`NOISY_LOGGERS` still at ``NOTSET`` to WARNING; returns the names changed."""
    changed = []
    for name in NOISY_LOGGERS:
        log = logging.getLogger(name)
        if log.level == logging.NOTSET:
            log.setLevel(logging.WARNING)
            _quietened.add(name)
            changed.append(name)
    return tuple(changed)


def restore_third_party_loggers() -> Tuple[str, ...]:
    """Undo :func:`quiet_third_party_loggers` (loggers given another level since are left alone)."""
    restored = []
    for name in sorted(_quietened):
        log = logging.getLogger(name)
        if log.level == logging.WARNING:
            log.setLevel(logging.NOTSET)
            restored.append(name)
    _quietened.clear()
    return tuple(restored)
