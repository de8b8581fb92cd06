"""The LLM transport: the client every node calls, the balancer over several endpoints,
the circuit breaker, the pre-flight check and the failures that stop a run.

This package may import ``state`` (records, settings, the line form) and ``embedded``
(started when no endpoint is given); nothing here knows about graphs or run folders.
"""
