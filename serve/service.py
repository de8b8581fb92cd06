"""The service's state and work, apart from HTTP: its LLM clients (from the client
factory), the graph and its checkpoints, the feedback cache, the quality gate, the
in-flight gate, the metrics, and one synthesis request run under them.

At start-up (:meth:`Service.lifespan`) the LLM endpoints get the batch run's pre-flight
check (``llm.preflight``: reachable, the key accepted, the model served); the service
starts either way and ``/readyz`` runs the check again until it passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError

from dataset.quality import QualityGate
from graph.builder import compile_graph
from graph.checkpoint import sqlite_saver
from llm.client import LLMClient
from llm.factory import run_clients
from llm.preflight import EndpointCheck, check_all, targets
from serve.feedback_cache import feedback_cache
from serve.metrics import ServiceMetrics
from serve.synthesis import Event, Graph, synthesize
from state.api import SynthesizeRequest, SynthesizeResponse
from state.settings import RefedSettings

log = structlog.get_logger("refed.serve")

READY_TIMEOUT = 5.0
"""Seconds /readyz waits for an endpoint's model list."""

_OVERLOADED = ("HTTP 429", "HTTP 503")
"""Upstream answers that mean "busy, come back later" (after our own retries)."""


def llm_failure_status(error: str) -> tuple[int, str | None]:
    """HTTP status (and Retry-After) for a request the LLM server made fail.

    Unreachable, reset or overloaded (429/503 after retries): 503 with Retry-After, as
    the request may well succeed later. No answer in time: 504. Anything else it did
    answer (another error status, a body that is not JSON, a cut-off or schema-breaking
    answer): 502. A failure that names several causes takes the first of these rules.
    """
    if "connection:" in error or any(code in error for code in _OVERLOADED):
        return 503, "5"
    if "timeout:" in error:
        return 504, None
    return 502, None


def readiness(checks: list[EndpointCheck]) -> tuple[bool, str | None]:
    """Ready when one generator endpoint passes and, with a judge of its own, one judge's;
    the detail names what failed."""
    ok = {c.target.role for c in checks if c.ok}
    ready = "generator" in ok and (
        "judge" in ok or not any(c.target.role == "judge" for c in checks)
    )
    problems = [c.message() for c in checks if not c.ok]
    return ready, "; ".join(problems) or None


class Service:
    """Everything a request needs; ``client`` replaces the one the factory makes (tests)."""

    def __init__(self, settings: RefedSettings, client: LLMClient | None = None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.clients = run_clients(settings, "serve", client, prefix="serve", circuit=False)
        self.check_endpoints = client is None  # a test's client has no endpoint to check
        self.endpoints = targets(settings)
        self.api_key = settings.api_key.get_secret_value()
        self.cache = feedback_cache(settings, settings.model)
        self.quality = QualityGate.from_settings(settings)  # benchmarks load once, here
        self.token = settings.service_token.get_secret_value() if settings.service_token else None
        self.gate = asyncio.Semaphore(settings.max_in_flight_requests)
        self.working: set[asyncio.Task[Any]] = set()
        """Synthesis tasks of /v1/synthesize still running (cancelled at shutdown)."""
        self._graph: Graph | None = None

    @property
    def graph(self) -> Graph:
        if self._graph is None:
            raise RuntimeError("the service has not started (no lifespan)")
        return self._graph

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """Open the cache and the checkpoints, check the endpoints; at the end cancel the
        work still going on, then close the stores and the clients."""
        s = self.settings
        await self.cache.open()
        checkpoints = s.service_db.with_name(s.service_db.stem + "-checkpoints.sqlite")
        async with sqlite_saver(checkpoints) as saver:
            self._graph = compile_graph(saver)
            if self.check_endpoints:
                ready, problems = readiness(await self.readiness_checks())
                if not ready:  # up anyway: /readyz says what is wrong until it is fixed
                    log.warning("llm_preflight_failed", base_url=s.base_url, problems=problems)
            log.info("service_ready", base_url=s.base_url, model=s.model)
            yield
            # uvicorn has drained (or cancelled) the requests; anything still going on
            # is cut here, before the stores close under it.
            leftover = [t for t in self.working if not t.done()]
            for t in leftover:
                t.cancel()
            await asyncio.gather(*leftover, return_exceptions=True)
            if leftover:
                log.warning("shutdown_cancelled", requests=len(leftover))
        await self.cache.close()
        await self.clients.aclose()
        log.info("service_stopped")

    async def readiness_checks(self) -> list[EndpointCheck]:
        return await check_all(self.endpoints, self.api_key, timeout=READY_TIMEOUT)

    def admit(self, req: SynthesizeRequest) -> None:
        """Refuse a request over the sample limit (422) or while the gate is full (503)."""
        limit = self.settings.max_samples_per_request
        if req.samples > limit:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "samples"),
                        "msg": f"at most {limit} samples per request",
                        "type": "value_error",
                    }
                ]
            )
        if self.gate.locked():
            self.metrics.rejected_requests.labels("in_flight").inc()
            raise HTTPException(
                503,
                f"{self.settings.max_in_flight_requests} requests in flight; retry later",
                headers={"Retry-After": "1"},
            )

    async def run(self, req: SynthesizeRequest) -> AsyncIterator[Event]:
        """One request through the graph, counted in the metrics, under the in-flight gate."""
        async with self.gate:
            self.metrics.in_flight.inc()
            try:
                async for event in synthesize(
                    self.graph, self.cache, self.clients.context, req, self.quality
                ):
                    if event.name == "done":
                        self._count(SynthesizeResponse.model_validate(event.data))
                    yield event
            finally:
                self.metrics.in_flight.dec()

    def _count(self, done: SynthesizeResponse) -> None:
        self.metrics.add_usage(done.usage)
        self.metrics.cache.labels("hit" if done.feedback_cached else "miss").inc()
        for s in done.samples + done.rejected:
            self.metrics.samples.labels(s.status).inc()
