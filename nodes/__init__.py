"""Graph nodes: pure async functions of (state, runtime context) returning a partial update.

Each node calls the LLM only through :mod:`llm.client`; none knows about files,
command lines or HTTP.
"""
