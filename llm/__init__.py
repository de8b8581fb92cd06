"""The LLM transport: the one client factory (:mod:`llm.factory`: every client is made
there, from the settings), the client the nodes call (:mod:`llm.client`: retries, limits,
structured output, token accounting), the HTTP transports (:mod:`llm.transport`), the
balancer over several endpoints, the circuit breaker, the pre-flight check and the
failures that stop a run.

This package may import ``state`` (records, settings, the line form) and ``embedded``
(started when no endpoint is given); nothing here knows about graphs or run folders.
"""
