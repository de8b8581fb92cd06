"""``python -m graph.judge``: the name ``judge.cli`` had before; the same command."""

import sys

from judge.cli import main

if __name__ == "__main__":
    sys.exit(main())
