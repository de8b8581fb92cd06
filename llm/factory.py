"""The one place LLM clients are made: from the settings, and nowhere else.

- :func:`llm_endpoint`: the settings with an LLM to call: the endpoints they name, or the
  embedded vLLM CPU server started for the while (its URL and model put in).
- :func:`generator_client` / :func:`judge_client`: an :class:`~llm.client.LLMClient` over
  the settings' endpoints (one, or several behind a :class:`~llm.balancer.Balancer`),
  with their model, the per-endpoint limit (adaptive up to ``concurrency``, or fixed),
  timeouts and retries. The URL lists come parsed from the settings
  (``RefedSettings.base_urls``, ``judge_base_urls``).
- :func:`run_clients`: a run's clients (the judge's only when it has an endpoint or model
  of its own), one circuit breaker for both, registered under the keys the run's context
  names; the batch runner, its graph processes and the service use it.
- the registry: :func:`client_for` and :func:`judge_client_for` give a node the client its
  context names. A context with no key (LangGraph Studio) gets one client per endpoint,
  made from the settings given once with :func:`use_settings` (the environment is not
  read again at call time).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm.balancer import Balancer
from llm.circuit import CircuitBreaker
from llm.client import LLMClient, LLMError
from state.context import RefedContext
from state.settings import RefedSettings


@contextlib.contextmanager
def llm_endpoint(
    settings: RefedSettings, log_dir: Path, *, judge: bool = False
) -> Iterator[RefedSettings]:
    """``settings`` with an endpoint: as they are when they name one (``judge``: the
    judge's or the generator's), else with the embedded server's URL and model while it
    runs (its log in ``log_dir``)."""
    given = (settings.judge_base_url or settings.base_url) if judge else settings.base_url
    if given:
        yield settings
        return
    from embedded.server import EmbeddedServer

    log_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedServer(log_file=log_dir / "vllm.log") as server:
        yield settings.model_copy(update={"base_url": server.base_url, "model": server.model})


def endpoint_client(
    base_urls: Sequence[str],
    model: str,
    api_key: str,
    *,
    timeout: float = 120.0,
    concurrency: int = 16,
    adaptive: bool = True,
    max_retries: int = 4,
    name: str = "default",
) -> LLMClient:
    """An :class:`~llm.client.LLMClient` over ``base_urls`` through a
    :class:`~llm.balancer.Balancer`. The client's own limiter is the sum of the endpoints'
    caps, so it never holds back what the per-endpoint limits would let through."""
    if isinstance(base_urls, str):
        raise TypeError("base_urls: a list of URLs (RefedSettings.base_urls splits a string)")
    balancer = Balancer(
        base_urls, model, api_key, timeout=timeout, concurrency=concurrency, adaptive=adaptive
    )
    return LLMClient(balancer, concurrency=balancer.capacity, max_retries=max_retries, name=name)


def generator_client(settings: RefedSettings) -> LLMClient:
    """The generator's client: the settings' endpoints and model."""
    if not settings.base_urls:
        raise ValueError("no endpoint: set base_url (or start the embedded server)")
    return endpoint_client(
        settings.base_urls,
        settings.model,
        settings.api_key.get_secret_value(),
        timeout=settings.timeout,
        concurrency=settings.concurrency,
        adaptive=not settings.fixed_concurrency,
        max_retries=settings.max_retries,
    )


def judge_client(
    settings: RefedSettings, base_url: str | None = None, model: str | None = None
) -> LLMClient:
    """The judge's client: its own endpoints and model where the settings give them, else
    the generator's, with its own limiter (``judge_concurrency``). ``base_url`` and
    ``model`` override both (a caller that found the endpoint itself)."""
    if base_url is not None or model is not None:
        settings = settings.model_copy(
            update={
                "judge_base_url": base_url or settings.judge_base_url,
                "judge_model": model or settings.judge_model,
            }
        )
    urls = settings.judge_base_urls or settings.base_urls
    if not urls:
        raise ValueError("the judge needs judge_base_url or base_url")
    return endpoint_client(
        urls,
        settings.judge_model or settings.model,
        settings.api_key.get_secret_value(),
        timeout=settings.timeout,
        concurrency=settings.judge_concurrency or settings.concurrency,
        adaptive=not settings.fixed_concurrency,
        max_retries=settings.max_retries,
        name="judge",
    )


def endpoint_stats(client: LLMClient | None) -> list[dict[str, Any]]:
    """Per-endpoint counters of ``client``'s balancer (empty for other transports)."""
    transport = client.transport if client is not None else None
    return transport.stats() if isinstance(transport, Balancer) else []


def own_judge(settings: RefedSettings) -> bool:
    """The judge has an endpoint or a model of its own (else it shares the generator's)."""
    return settings.judge_base_url is not None or settings.judge_model is not None


@dataclass
class RunClients:
    """The generator's client, the judge's own (None: the generator's), their keys in the
    registry, and the context the graph runs with (naming both keys)."""

    generator: LLMClient
    judge: LLMClient | None
    key: str
    judge_key: str | None
    context: RefedContext

    @property
    def requests(self) -> int:
        """LLM requests made by both clients."""
        return self.generator.meter.requests + (
            self.judge.meter.requests if self.judge is not None else 0
        )

    async def aclose(self) -> None:
        """Unregister both keys and close both clients."""
        unregister_client(self.key)
        if self.judge_key is not None:
            unregister_client(self.judge_key)
        for used in (self.generator, self.judge):
            if used is not None:
                await used.aclose()


def run_clients(
    settings: RefedSettings,
    run_id: str,
    client: LLMClient | None = None,
    *,
    prefix: str = "run",
    circuit: bool = True,
) -> RunClients:
    """A run's clients, registered, with one circuit breaker, and the context naming them.

    ``client`` replaces the generator's client made from the settings (tests). ``circuit``
    False: no breaker (the service: one that opened would refuse every later request).
    Close the result with :meth:`RunClients.aclose`.
    """
    generator = client if client is not None else generator_client(settings)
    key = f"{prefix}:{run_id}:{id(generator)}"
    register_client(key, generator)
    judge, judge_key = None, None
    if own_judge(settings):
        judge, judge_key = judge_client(settings), f"{key}:judge"
        register_client(judge_key, judge)
    breaker = None
    if circuit and settings.circuit_open_after:
        breaker = CircuitBreaker(settings.circuit_open_after)
    for used in (generator, judge):  # one breaker for the run, whoever calls
        if used is not None and used.circuit is None:
            used.circuit = breaker
    ctx = RefedContext.from_settings(
        settings, run_id=run_id, client_key=key, judge_client_key=judge_key
    )
    return RunClients(generator, judge, key, judge_key, ctx)


# --- the registry the nodes look their clients up in -----------------------------------

_clients: dict[str, LLMClient] = {}
_settings: RefedSettings | None = None


def register_client(key: str, client: LLMClient) -> None:
    """Make ``client`` the one nodes use when the context names ``key``."""
    _clients[key] = client


def unregister_client(key: str) -> None:
    _clients.pop(key, None)


def use_settings(settings: RefedSettings | None) -> None:
    """The settings clients are made from for a context that names no client (Studio)."""
    global _settings
    _settings = settings


def _registered(key: str) -> LLMClient:
    try:
        return _clients[key]
    except KeyError:
        raise LLMError("config", f"no LLM client registered as {key!r}") from None


def _made(key: str, make: Any, **endpoint: Any) -> LLMClient:
    """The client under ``key``, made at first use from the settings given to
    :func:`use_settings` with ``endpoint`` put in."""
    if key not in _clients:
        if _settings is None:
            raise LLMError(
                "config",
                "no LLM client for this context: the runner and the service register "
                "theirs; elsewhere give the settings first (llm.factory.use_settings)",
            )
        _clients[key] = make(_settings.model_copy(update=endpoint))
    return _clients[key]


def client_for(ctx: RefedContext) -> LLMClient:
    """The client for this context: the registered one it names, else one per endpoint."""
    if ctx.client_key is not None:
        return _registered(ctx.client_key)
    if not ctx.base_url:
        raise LLMError(
            "config",
            "no base_url: set REFED_BASE_URL/OPENAI_BASE_URL or start the embedded server "
            "with `python -m embedded serve`",
        )
    key = f"{ctx.base_url}|{ctx.model}"
    return _made(key, generator_client, base_url=ctx.base_url, model=ctx.model)


def judge_client_for(ctx: RefedContext) -> LLMClient:
    """The judge's client: a registered one, its own endpoint/model, else the generator's."""
    if ctx.judge_client_key is not None:
        return _registered(ctx.judge_client_key)
    if ctx.judge_base_url is None and ctx.judge_model is None:
        return client_for(ctx)
    base_url = ctx.judge_base_url or ctx.base_url
    model = ctx.judge_model or ctx.model
    if not base_url:
        raise LLMError("config", "no base_url for the judge: set judge_base_url or base_url")
    return _made(
        f"judge|{base_url}|{model}",
        judge_client,
        base_url=ctx.base_url,
        model=ctx.model,
        judge_base_url=ctx.judge_base_url,
        judge_model=ctx.judge_model,
        judge_concurrency=ctx.judge_concurrency,
    )
