"""``python -m graph.export``: the name ``dataset.export`` had before; the same command."""

import sys

from dataset.export import main

if __name__ == "__main__":
    sys.exit(main())
