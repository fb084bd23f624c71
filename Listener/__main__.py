"""``python -m Listener``: the ``mqtt-listener`` command line (see :mod:`Listener.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
