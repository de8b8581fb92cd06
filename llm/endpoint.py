"""Where the LLM is: the configured endpoint, or the embedded vLLM CPU server started here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from state.settings import RefedSettings


@contextlib.contextmanager
def llm_endpoint(settings: RefedSettings, log_dir: Path) -> Iterator[tuple[str, str]]:
    """Yield (base_url, model): the given endpoint(s), or the embedded server while in use.

    Several endpoints (``--base-url`` repeated, a comma list, ``--base-urls-file``) come as
    one comma-separated ``base_url``; :func:`llm.balancer.endpoint_client` splits it.
    """
    if settings.base_url:
        yield settings.base_url, settings.model
        return
    from embedded.server import EmbeddedServer

    log_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedServer(log_file=log_dir / "vllm.log") as server:
        yield server.base_url, server.model
