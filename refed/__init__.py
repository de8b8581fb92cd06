"""The ``refed`` command: one entry point whose subcommands are the package commands
(``refed run`` is ``python -m graph.run``, and so on; see :mod:`refed.cli`).

This package may import every other package's command module, and nothing imports it.
"""
