"""The graph's nodes, one module each: async functions of (state, runtime context)
returning a partial update of the graph state.

A node calls the LLM through the client :mod:`llm.factory` gives for its context, and
judges through :mod:`judge.scoring` or the trained metric (:mod:`metric.node`); none knows
about files, command lines or HTTP.

This package may import ``llm``, ``judge``, ``metric``, ``dataset``, ``prompts`` and
``state``; ``graph`` assembles it.
"""
