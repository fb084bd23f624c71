"""``python -m Listener``: the ``mqtt-listener`` command line (see :mod:`Listener.cli.command`)."""

import sys

from .cli.command import main

if __name__ == "__main__":
    sys.exit(main())
