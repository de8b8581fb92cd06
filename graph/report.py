"""``python -m graph.report``: the name ``dataset.report`` had before; the same command."""

import sys

from dataset.report import main

if __name__ == "__main__":
    sys.exit(main())
