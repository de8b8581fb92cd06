"""``python -m judge``: the LLM judge's command (:mod:`judge.cli`)."""

import sys

from judge.cli import main

if __name__ == "__main__":
    sys.exit(main())
