"""Graph nodes: pure async functions of (state, runtime context) returning a partial update.

Each node calls the LLM only through :mod:`nodes.llm`; none knows about files,
command lines or HTTP.
"""
