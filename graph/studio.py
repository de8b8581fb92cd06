"""The graph LangGraph Studio / ``langgraph dev`` loads (compiled without a checkpointer)."""

from graph.builder import compile_graph

graph = compile_graph()
