"""The graph LangGraph Studio / ``langgraph dev`` loads (compiled without a checkpointer).

Studio's contexts name no LLM client: the nodes get one per endpoint, made by the client
factory from the settings read here, once (environment, config file, ``REFED_PROFILE``).
"""

from graph.builder import compile_graph
from llm.factory import use_settings
from state.profile import with_named_profile
from state.settings import RefedSettings

use_settings(with_named_profile(RefedSettings()))
graph = compile_graph()
