"""``python -m refed``: the ``refed`` command."""

import sys

from refed.cli import main

if __name__ == "__main__":
    sys.exit(main())
