"""A run's LLM clients, made from its settings.

:func:`run_clients` gives the generator's client (over one endpoint or several, balanced)
and, when the judge has an endpoint or model of its own, the judge's; both registered for
the nodes under keys the run's context names, and sharing one circuit breaker.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm.balancer import endpoint_client
from llm.circuit import CircuitBreaker
from llm.client import LLMClient, register_client, unregister_client
from state.context import RefedContext
from state.settings import RefedSettings


def client_from_settings(settings: RefedSettings, base_url: str, model: str) -> LLMClient:
    """``base_url``: one endpoint, or several separated by commas (balanced, see llm.balancer)."""
    return endpoint_client(
        base_url,
        model,
        settings.api_key.get_secret_value(),
        timeout=settings.timeout,
        concurrency=settings.concurrency,
        adaptive=not settings.fixed_concurrency,
        max_retries=settings.max_retries,
    )


def _judge_client(
    settings: RefedSettings, base_url: str | None, key: str
) -> tuple[str | None, LLMClient | None]:
    """The judge's own client (own endpoint or model, own limiter), registered; or none."""
    if settings.judge_base_url is None and settings.judge_model is None:
        return None, None
    judge_url = settings.judge_base_url or base_url
    if judge_url is None:
        raise ValueError("the judge needs judge_base_url or base_url")
    client = endpoint_client(
        judge_url,
        settings.judge_model or settings.model,
        settings.api_key.get_secret_value(),
        timeout=settings.timeout,
        concurrency=settings.judge_concurrency or settings.concurrency,
        adaptive=not settings.fixed_concurrency,
        max_retries=settings.max_retries,
        name="judge",
    )
    register_client(key + ":judge", client)
    return key + ":judge", client


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
    settings: RefedSettings, run_id: str, client: LLMClient | None = None
) -> RunClients:
    """Register the run's clients, give them one circuit breaker, build the run's context.

    ``client`` replaces the generator's client made from the settings (tests). Close the
    result with :meth:`RunClients.aclose`.
    """
    base_url = settings.base_url
    if client is None:
        if base_url is None:
            raise ValueError("a run needs a base_url or a client")
        client = client_from_settings(settings, base_url, settings.model)
    key = f"run:{run_id}:{id(client)}"
    register_client(key, client)
    judge_key, judge_client = _judge_client(settings, base_url, key)
    circuit = CircuitBreaker(settings.circuit_open_after) if settings.circuit_open_after else None
    for used in (client, judge_client):  # one breaker for the run, whoever calls
        if used is not None and used.circuit is None:
            used.circuit = circuit
    context = RefedContext.from_settings(
        settings, run_id=run_id, client_key=key, judge_client_key=judge_key
    )
    return RunClients(client, judge_client, key, judge_key, context)
