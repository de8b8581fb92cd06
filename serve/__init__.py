"""The HTTP service for on-demand synthesis (``python -m serve``, ``refed serve``): the app
factory (:mod:`serve.app`), its routers (:mod:`serve.routes`), the service's state and work
(:mod:`serve.service`), one request through the graph (:mod:`serve.synthesis`), the
feedback cache, the body limit and the Prometheus metrics.

This package may import ``graph`` (the graph and its checkpoints), ``llm``, ``dataset``,
``prompts`` and ``state``; only the ``refed`` command imports it.
"""
