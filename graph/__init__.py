"""The graph and the batch runner.

- the graph: :mod:`graph.builder` (the StateGraph of the nodes; :mod:`graph.studio` is the
  module LangGraph Studio loads) and its checkpoints (:mod:`graph.checkpoint`);
- the runner: one core (:mod:`graph.runner`, :mod:`graph.batch`) over one storage
  interface (:mod:`graph.store`: ledgers, checkpoints, claims, run folder) with three
  stores: SQLite in this process (``graph.batch.LocalStore``), graph processes
  (:mod:`graph.procpool`) and Postgres (:mod:`graph.pgstore`);
- the command, a thin shell over the runner: :mod:`graph.run` (``python -m graph.run``);
  ``graph.judge``, ``graph.export`` and ``graph.report`` are the old names of the judge's
  and the dataset's commands.

This package may import ``nodes``, ``llm``, ``dataset``, ``judge``, ``prompts`` and
``state``; ``serve`` and the ``refed`` command use it.
"""
