"""Several OpenAI-compatible endpoints behind one :class:`~llm.transport.Transport`.

:class:`Balancer` holds one :class:`~llm.transport.HTTPTransport` per endpoint and, per call:

- **picks** the endpoint with the fewest requests outstanding among those that are
  healthy and under their limit (a call waits when every limit is reached);
- **fails over**: a call that gets no answer from one endpoint (connection refused or
  dropped, timeout, 429, 5xx) is sent at once to an endpoint it has not tried yet; only
  when it has tried them all does the error go back to :class:`~llm.client.LLMClient`,
  which backs off and retries as before;
- **ejects** an endpoint that refuses or drops a connection, and sends it nothing
  until a probe (``GET {base_url}/models``) answers; the wait before the next probe
  doubles from ``eject_base`` up to ``eject_cap`` seconds. When every endpoint is
  ejected, calls go to all of them anyway (a success brings an endpoint back at once);
- **tells a sick endpoint from a poison request**: an endpoint is judged by failures
  of *different* requests, never by the retries of one (a request that fails every
  time, say a prompt that trips a server bug, fails its candidate and nothing else).
  After ``eject_after`` different requests failed in a row with no answer between,
  the endpoint is probed, and ejected only if the probe fails too. A 429, or a 503
  with ``Retry-After``, is "busy", never "broken". A request that got the same error
  answer (same status, same message) from two endpoints, or twice from one that
  answered other requests in between, is not sent again: the request is at fault, and
  its candidate fails with that answer. A 401, 403 or 404 raises
  :class:`~llm.stops.ServerRefused` (the models the endpoint serves listed for a
  404): the run stops;
- **adapts its limit** (AIMD): each endpoint starts at a few requests and, while the
  endpoint is kept full and its latency stays within ``tolerance`` times its low-load
  latency, raises the limit up to its cap, the ``--concurrency`` setting: by one per
  answer at first (doubling per round, "slow start"), then by about one per round of
  answers. Latency past that holds it; a 429, 503, 504 or a timeout halves it (see
  :class:`AIMDLimit`; a 500 is the server's answer to one request, not overload).
  ``adaptive=False`` keeps the limit at the cap.

:meth:`Balancer.stats` gives per-endpoint counters (in flight, limit, calls,
failures, ejected) for logs and the run summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from llm.preflight import served_models
from llm.stops import REFUSING_STATUSES, ServerRefused
from llm.transport import Completion, HTTPTransport, Messages, TransportError, server_unavailable

log = structlog.get_logger("refed.balancer")

OVERLOAD_STATUS = frozenset({429, 503, 504})
"""Statuses that cut an endpoint's limit (with timeouts): the server is past its capacity."""
REMEMBERED_FAILURES = 256
"""Requests per endpoint whose failure is remembered, to know their retries again."""


def request_key(messages: Messages, params: dict[str, Any]) -> str:
    """The same key for the same request (its retries), another for any other request."""
    text = json.dumps([list(messages), params], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


Answer = tuple[int | None, str]
"""An error answer: its status and message."""


def busy(exc: TransportError) -> bool:
    """A 429, or a 503 that says when to come back: the endpoint is busy, not broken."""
    return exc.status == 429 or (exc.status == 503 and exc.retry_after is not None)


def request_fault(exc: TransportError) -> bool:
    """An answer the server gave this request (a 500, an unreadable body), as opposed to
    the server being away or overloaded: the same answer from two servers blames the
    request."""
    return exc.kind == "http" and not server_unavailable(exc)


class LoopLag:
    """How late this process's event loop runs a timer: the client's own delay.

    When every core is busy, or the client's own work fills its loop, an answer waits
    in the client before it is seen, and the measured latency grows with nothing
    queued at the server. Above :data:`BUSY_LAG` the latency signal is not trusted (see
    :class:`AIMDLimit`). A timer every :data:`PERIOD` seconds; nothing else.
    """

    PERIOD = 0.05
    BUSY_LAG = 0.01

    def __init__(self) -> None:
        self.lag = 0.0
        """Smoothed lateness of the timer (seconds)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    @property
    def busy(self) -> bool:
        return self.lag > self.BUSY_LAG

    def ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._handle is not None:
            return
        self._loop = loop
        self._due = loop.time() + self.PERIOD
        self._handle = loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.lag = 0.7 * self.lag + 0.3 * max(0.0, now - self._due)
        self._due = now + self.PERIOD
        self._handle = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class AIMDLimit:
    """An adaptive limit on requests in flight to one endpoint.

    Additive increase while the endpoint is used to its limit and latency holds;
    multiplicative decrease on overload signals (429, 5xx, timeouts). Latency past
    ``tolerance`` times the low-load latency only holds the limit where it is: the
    client cannot tell a server queueing from its own event loop running late (a busy
    client, a busy machine) or from a batching server that is slower per request but
    faster in total, and cutting on any of those cost throughput (the overhead
    benchmark). When latency stays high for two rounds of answers at a held limit, the
    requests got slower (longer answers), and the low-load latency is measured again
    from there; growth then goes on one slot per round.
    """

    def __init__(
        self,
        cap: int,
        *,
        initial: int = 4,
        adaptive: bool = True,
        tolerance: float = 2.0,
        decrease: float = 0.5,
    ) -> None:
        self.cap = cap
        self.initial = max(1, min(cap, initial))
        self.adaptive = adaptive
        self.tolerance = tolerance
        self.decrease = decrease
        self.limit = float(self.initial if adaptive else cap)
        self.slow_start = adaptive
        self.latency: float | None = None
        """Smoothed latency of recent answers (seconds)."""
        self.baseline: float | None = None
        """Low-load latency: the lowest smoothed latency seen since the last re-measure."""
        self.held = 0
        """Answers in a row with latency past the tolerance (the limit held meanwhile)."""
        self._last_cut = -1e9

    @property
    def slots(self) -> int:
        return max(1, int(self.limit))

    def latency_holds(self) -> bool:
        if self.latency is None or self.baseline is None:
            return True
        return self.latency <= self.tolerance * self.baseline

    def on_success(
        self,
        seconds: float,
        saturated: bool,
        *,
        client_busy: bool = False,
    ) -> None:
        """An answer after ``seconds``; ``saturated``: the limit was in the way of its
        request (it filled the endpoint or waited for a slot); ``client_busy``: this
        process's event loop runs late (:class:`LoopLag`), so the latency says more about
        the client than the server and does not hold the limit."""
        if self.latency is None:
            self.latency = seconds
        else:
            self.latency = 0.9 * self.latency + 0.1 * seconds
        if self.baseline is None or self.latency < self.baseline:
            self.baseline = self.latency
        if not self.adaptive:
            return
        # In slow start each answer's own latency is judged, against a lower bar (the
        # smoothed one lags behind a limit that doubles every round, and an answer shows
        # the limit of one round ago); after it, the smoothed latency.
        slow = (
            self.baseline is not None and seconds > (1 + (self.tolerance - 1) / 2) * self.baseline
            if self.slow_start
            else not self.latency_holds()
        )
        if slow and not client_busy:  # hold; if it lasts: the requests are slower now
            self.held += 1
            if self.held >= max(20, 2 * self.slots):
                self.baseline, self.held, self.slow_start = self.latency, 0, False
            return
        self.held = 0
        if not saturated:
            return
        self.limit += 1.0 if self.slow_start else 1.0 / self.limit
        if self.limit >= self.cap:
            self.limit = float(self.cap)
            self.slow_start = False

    def on_overload(self, now: float | None = None) -> bool:
        """A 429, 5xx or timeout: cut the limit unless it was cut within the last round trip."""
        if not self.adaptive:
            return False
        now = time.monotonic() if now is None else now
        self.slow_start = False
        if now - self._last_cut < (self.latency or 0.0):
            return False
        self._last_cut = now
        self.limit = max(1.0, self.limit * self.decrease)
        return True

    def reset(self) -> None:
        """Start again from the initial limit (an endpoint back from ejection)."""
        if self.adaptive:
            self.limit = float(self.initial)
            self.slow_start = True


@dataclass
class Endpoint:
    """One endpoint's transport, limit and counters."""

    index: int
    base_url: str
    transport: HTTPTransport
    limit: AIMDLimit
    in_flight: int = 0
    calls: int = 0
    failures: int = 0
    ejections: int = 0
    consecutive_failures: int = 0
    """Different requests failed in a row, with no answer between (retries not counted)."""
    ejected: bool = False
    probe_at: float = 0.0
    eject_for: float = 0.0
    probing: bool = False
    checking: bool = False
    """A probe is asking whether the endpoint is alive after failures in a row."""
    checks: int = 0
    """Probes after failures in a row that found the endpoint alive (it stayed in)."""
    last_error: str | None = None
    peak_in_flight: int = 0
    answered_at: float = -1e18
    """When the endpoint last answered a request (monotonic seconds)."""
    failed_requests: OrderedDict[str, tuple[Answer, float]] = field(default_factory=OrderedDict)
    """The latest requests that failed here (:func:`request_key`): the error, and when."""

    def stats(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "in_flight": self.in_flight,
            "limit": round(self.limit.limit, 2),
            "cap": self.limit.cap,
            "peak_in_flight": self.peak_in_flight,
            "calls": self.calls,
            "failures": self.failures,
            "ejected": self.ejected,
            "ejections": self.ejections,
            "checks": self.checks,
            "latency_ms": None if self.limit.latency is None else round(1000 * self.limit.latency),
            "last_error": self.last_error,
        }


@dataclass
class _Waiters:
    """Calls waiting for a free slot, in order, per event loop (a future belongs to one)."""

    by_loop: dict[asyncio.AbstractEventLoop, deque[asyncio.Future[None]]] = field(
        default_factory=dict
    )

    def get(self, loop: asyncio.AbstractEventLoop) -> deque[asyncio.Future[None]]:
        queue = self.by_loop.get(loop)
        if queue is None:
            self.by_loop = {lp: q for lp, q in self.by_loop.items() if not lp.is_closed()}
            queue = self.by_loop[loop] = deque()
        return queue

    def wake(self, n: int | None) -> None:
        """Let ``n`` waiters of the running loop (None: all) look for a slot again."""
        try:
            queue = self.by_loop.get(asyncio.get_running_loop())
        except RuntimeError:
            return
        while queue and (n is None or n > 0):
            fut = queue.popleft()
            if not fut.done():
                fut.set_result(None)
                if n is not None:
                    n -= 1


class Balancer:
    """A :class:`~llm.transport.Transport` over several endpoints (see the module docstring)."""

    def __init__(
        self,
        base_urls: Sequence[str],
        model: str,
        api_key: str,
        *,
        timeout: float = 120.0,
        concurrency: int = 16,
        adaptive: bool = True,
        initial: int = 16,
        tolerance: float = 2.0,
        eject_after: int = 3,
        eject_base: float = 1.0,
        eject_cap: float = 30.0,
        probe_timeout: float = 5.0,
    ) -> None:
        if not base_urls:
            raise ValueError("Balancer needs at least one endpoint")
        self.model = model
        self.endpoints = [
            Endpoint(
                index=i,
                base_url=url.rstrip("/"),
                transport=HTTPTransport(url, model, api_key, timeout=timeout),
                limit=AIMDLimit(
                    concurrency, initial=initial, adaptive=adaptive, tolerance=tolerance
                ),
            )
            for i, url in enumerate(base_urls)
        ]
        self.eject_after = eject_after
        self.eject_base = eject_base
        self.eject_cap = eject_cap
        self.probe_timeout = probe_timeout
        self._api_key = api_key
        self._waiters = _Waiters()
        self._ejected = 0
        """How many endpoints are ejected (probes are looked at only then)."""
        self.loop_lag = LoopLag()
        """This process's own delay: a busy client's latency does not hold the limits."""
        self._probes: set[asyncio.Task[None]] = set()
        self.failovers = 0
        """Calls sent again to another endpoint after one failed them."""

    @property
    def capacity(self) -> int:
        """The most requests that can ever be in flight: the sum of the endpoints' caps."""
        return sum(e.limit.cap for e in self.endpoints)

    def stats(self) -> list[dict[str, Any]]:
        return [e.stats() for e in self.endpoints]

    # --- choosing an endpoint ---------------------------------------------------------

    def choose(self, tried: set[int]) -> Endpoint | None:
        """The endpoint for the next request, or None when all are full.

        Raises LookupError when every endpoint has been tried for this call.
        """
        if len(self.endpoints) == 1:  # the common case, without the lists
            only = self.endpoints[0]
            if tried:
                raise LookupError("every endpoint tried")
            return only if only.in_flight < only.limit.slots else None
        pool = [e for e in self.endpoints if e.index not in tried]
        if not pool:
            raise LookupError("every endpoint tried")
        healthy = [e for e in pool if not e.ejected]
        if not healthy and all(e.ejected for e in self.endpoints):
            healthy = pool  # every endpoint is out: try them all rather than none
        elif not healthy:
            healthy = pool  # the healthy ones failed this call already: try an ejected one
        free = [e for e in healthy if e.in_flight < e.limit.slots]
        if not free:
            return None
        low = min(e.in_flight for e in free)
        best = [e for e in free if e.in_flight == low]
        return best[0] if len(best) == 1 else random.choice(best)

    async def _acquire(self, tried: set[int]) -> tuple[Endpoint, bool]:
        """An endpoint with a free slot (taken), and whether the call had to wait for it."""
        waited = False
        while True:
            if self._ejected:
                self._start_probes()
            ep = self.choose(tried)
            if ep is not None:
                ep.in_flight += 1
                ep.calls += 1
                if ep.in_flight > ep.peak_in_flight:
                    ep.peak_in_flight = ep.in_flight
                return ep, waited
            waited = True
            # Wait for a slot, or half a second at most: slots can free up on another loop,
            # probes can finish. A future and a timeout, not a task, per wait.
            loop = asyncio.get_running_loop()
            queue = self._waiters.get(loop)
            fut: asyncio.Future[None] = loop.create_future()
            queue.append(fut)
            try:
                async with asyncio.timeout(0.5):
                    await fut
            except TimeoutError:
                pass
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self._waiters.wake(1)  # woken, then cancelled: pass the slot on
                raise
            finally:
                if not fut.done():
                    fut.cancel()
                if fut.cancelled():
                    with contextlib.suppress(ValueError):
                        queue.remove(fut)

    def _wake(self, n: int | None = 1) -> None:
        self._waiters.wake(n)

    # --- the Transport protocol ---------------------------------------------------------

    async def complete(self, messages: Messages, params: dict[str, Any]) -> Completion:
        if self.endpoints[0].limit.adaptive:
            self.loop_lag.ensure_running()
        tried: set[int] = set()
        last: TransportError | None = None
        key: str | None = None  # the request's key, made at its first failure
        answers: set[Answer] = set()  # the error answers endpoints gave this call
        while True:
            try:
                ep, waited = await self._acquire(tried)
            except LookupError:
                assert last is not None  # only raised once every endpoint failed this call
                raise last from None
            slots_before = ep.limit.slots
            # The limit was in the way: this request filled the endpoint or waited for it.
            saturated = waited or ep.in_flight >= slots_before
            started = time.monotonic()
            try:
                done = await ep.transport.complete(messages, params)
            except TransportError as exc:
                ep.in_flight -= 1
                if exc.status in REFUSING_STATUSES:
                    self._wake()
                    raise await self._refused(ep, exc) from exc
                key = key or request_key(messages, params)
                earlier = ep.failed_requests.get(key)  # this request failed here before
                self._failed(ep, exc, key)
                self._wake(None if ep.ejected else 1)
                if not exc.retryable:
                    raise
                tried.add(ep.index)
                last = exc
                if request_fault(exc):
                    answer = (exc.status, exc.message)
                    if answer in answers:  # another endpoint said the same: the request
                        raise TransportError(
                            exc.kind,
                            f"{exc.message} (the same from {len(tried)} endpoints: the "
                            "request fails, not the servers)",
                            retryable=False,
                            status=exc.status,
                        ) from exc
                    if earlier is not None and earlier[0] == answer and ep.answered_at > earlier[1]:
                        raise TransportError(  # and the endpoint answered others meanwhile
                            exc.kind,
                            f"{exc.message} (the same twice, while the server answered other "
                            "requests: the request fails, not the server)",
                            retryable=False,
                            status=exc.status,
                        ) from exc
                    answers.add(answer)
                if len(tried) < len(self.endpoints):
                    self.failovers += 1
                    log.debug("llm_failover", endpoint=ep.base_url, error=exc.message[:200])
                continue
            except BaseException:
                ep.in_flight -= 1
                self._wake()
                raise
            ep.in_flight -= 1
            self._succeeded(ep, started, saturated)
            grown = ep.limit.slots - slots_before
            self._wake(1 + max(0, grown))
            return done

    async def _refused(self, ep: Endpoint, exc: TransportError) -> ServerRefused:
        """The run-stopping error for a 401, 403 or 404 (a 404 lists the served models)."""
        served = None
        if exc.status == 404:
            served = await served_models(ep.base_url, self._api_key, timeout=self.probe_timeout)
        log.error("endpoint_refused", endpoint=ep.base_url, status=exc.status, error=exc.message)
        return ServerRefused(
            exc.status or 0, exc.message, url=ep.base_url, model=self.model, served=served
        )

    async def aclose(self) -> None:
        """Stop probing, close the sessions of the running loop, log the endpoints' counters."""
        for task in list(self._probes):
            task.cancel()
        self.loop_lag.stop()
        if any(e.calls for e in self.endpoints):
            log.info("endpoint_stats", endpoints=self.stats(), failovers=self.failovers)
        for ep in self.endpoints:
            await ep.transport.aclose()

    # --- health ---------------------------------------------------------------------------

    def _succeeded(self, ep: Endpoint, started: float, saturated: bool) -> None:
        ep.answered_at = time.monotonic()
        ep.consecutive_failures = 0
        ep.limit.on_success(time.monotonic() - started, saturated, client_busy=self.loop_lag.busy)
        if ep.ejected:
            self._restore(ep, "answered")

    def _failed(self, ep: Endpoint, exc: TransportError, key: str) -> None:
        """Count a failure of request ``key`` against ``ep`` (see the module docstring)."""
        if not exc.retryable:
            return  # the request was at fault (4xx), not the endpoint
        ep.failures += 1
        ep.last_error = exc.message[:200]
        overloaded = exc.kind == "timeout" or exc.status in OVERLOAD_STATUS
        if overloaded and ep.limit.on_overload():
            log.info("endpoint_limit_cut", endpoint=ep.base_url, limit=round(ep.limit.limit, 2))
        if busy(exc):
            return  # busy, not broken: fewer requests, not none
        if exc.kind == "connection":
            self._eject(ep)
            return
        again = key in ep.failed_requests
        ep.failed_requests[key] = ((exc.status, exc.message), time.monotonic())
        if again:
            return  # a retry of a request that failed here before: nothing new on the endpoint
        if len(ep.failed_requests) > REMEMBERED_FAILURES:
            ep.failed_requests.popitem(last=False)
        ep.consecutive_failures += 1
        if ep.consecutive_failures >= self.eject_after and not ep.checking and not ep.ejected:
            ep.checking = True
            task = asyncio.get_running_loop().create_task(self._check(ep))
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)

    async def _check(self, ep: Endpoint) -> None:
        """After failures of different requests in a row: eject ``ep`` unless a probe answers."""
        failed = ep.consecutive_failures
        try:
            alive = await self.probe(ep)
        finally:
            ep.checking = False
        if alive:
            ep.checks += 1
            ep.consecutive_failures = 0
            log.info(
                "endpoint_alive", endpoint=ep.base_url, failed_in_a_row=failed, error=ep.last_error
            )
        elif ep.consecutive_failures > 0:  # nothing answered meanwhile either
            self._eject(ep)

    def _eject(self, ep: Endpoint) -> None:
        now = time.monotonic()
        if ep.ejected:
            return
        ep.ejected = True
        self._ejected = sum(e.ejected for e in self.endpoints)
        ep.ejections += 1
        ep.eject_for = min(self.eject_cap, max(self.eject_base, 2 * ep.eject_for))
        ep.probe_at = now + ep.eject_for
        log.warning(
            "endpoint_ejected",
            endpoint=ep.base_url,
            error=ep.last_error,
            probe_in=ep.eject_for,
            in_flight=ep.in_flight,
        )

    def _restore(self, ep: Endpoint, why: str) -> None:
        ep.ejected = False
        self._ejected = sum(e.ejected for e in self.endpoints)
        ep.eject_for = 0.0
        ep.consecutive_failures = 0
        ep.limit.reset()
        log.info("endpoint_restored", endpoint=ep.base_url, why=why)

    def _start_probes(self) -> None:
        now = time.monotonic()
        for ep in self.endpoints:
            if ep.ejected and not ep.probing and now >= ep.probe_at:
                ep.probing = True
                task = asyncio.get_running_loop().create_task(self._probe(ep))
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)

    async def probe(self, ep: Endpoint) -> bool:
        """Whether ``GET {base_url}/models`` answers 200 within ``probe_timeout``."""
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.probe_timeout), headers=headers
                ) as session,
                session.get(ep.base_url + "/models") as resp,
            ):
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _probe(self, ep: Endpoint) -> None:
        try:
            ok = await self.probe(ep)
        finally:
            ep.probing = False
        if not ep.ejected:
            return
        if ok:
            self._restore(ep, "probe")
            self._wake(None)
            return
        ep.eject_for = min(self.eject_cap, 2 * ep.eject_for)
        ep.probe_at = time.monotonic() + ep.eject_for
        log.info("endpoint_probe_failed", endpoint=ep.base_url, probe_in=ep.eject_for)
