"""Several endpoints: least-outstanding choice, AIMD limits, ejection and re-probe, failover.

The unit tests run the balancer against aiohttp fake servers in this process or in their
own (``testing.servers.FakeServer``, which can be killed mid-call); the last test runs
``python -m graph.run`` over two fake endpoints and kills one of them mid-run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dataset.ledger import Ledger
from llm.balancer import AIMDLimit, Balancer, LoopLag
from llm.client import LLMError
from llm.factory import endpoint_client
from llm.transport import TransportError
from state.records import ReferenceDone, Sample
from state.settings import RefedSettings
from testing.fake_server import FakeServer as FakeApp
from testing.runs import write_seeds

from .conftest import REPO, FakeServerProc, free_port

MESSAGES = [{"role": "user", "content": "Say something."}]
PARAMS = {"temperature": 0.0, "max_tokens": 32}


@asynccontextmanager
async def serve(app: FakeApp, port: int | None = None) -> AsyncIterator[str]:
    """Run the fake server's app in this loop; yields its base URL."""
    port = port or free_port()
    runner = web.AppRunner(app.app(), shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


# --- choosing --------------------------------------------------------------------------


def test_least_outstanding_choice() -> None:
    b = Balancer(["http://a/v1", "http://b/v1", "http://c/v1"], "m", "", concurrency=8)
    a, bb, c = b.endpoints
    for ep in b.endpoints:
        ep.limit.limit = 8.0
    a.in_flight, bb.in_flight, c.in_flight = 5, 2, 3
    assert b.choose(set()) is bb
    # an endpoint already tried for this call is not chosen again
    assert b.choose({1}) is c
    # an ejected endpoint gets nothing while a healthy one has room
    bb.ejected = True
    assert b.choose(set()) is c
    # a full endpoint gets nothing: the least loaded one with room wins
    c.in_flight = 8
    assert b.choose(set()) is a
    a.in_flight = 8
    assert b.choose(set()) is None  # every healthy endpoint is full: the call waits
    # every endpoint ejected: they are all tried rather than none
    a.ejected = c.ejected = True
    a.in_flight = c.in_flight = 0
    assert b.choose(set()) in (a, c)
    with pytest.raises(LookupError):
        b.choose({0, 1, 2})


def test_ties_are_spread() -> None:
    b = Balancer(["http://a/v1", "http://b/v1"], "m", "", concurrency=4)
    picks = {b.choose(set()).index for _ in range(200)}  # type: ignore[union-attr]
    assert picks == {0, 1}


# --- AIMD ------------------------------------------------------------------------------


def test_aimd_slow_start_then_additive() -> None:
    lim = AIMDLimit(32, initial=4)
    assert lim.limit == 4
    for _ in range(4):  # one round at the limit: +1 per answer (doubling per round)
        lim.on_success(0.1, saturated=True)
    assert lim.limit == 8
    lim.on_success(0.1, saturated=False)  # not full: no reason to raise it
    assert lim.limit == 8
    assert lim.on_overload(now=100.0)
    assert lim.limit == 4 and not lim.slow_start
    assert not lim.on_overload(now=100.01)  # same round trip: one cut only
    assert lim.limit == 4
    assert lim.on_overload(now=101.0)
    assert lim.limit == 2
    for _ in range(2):  # congestion avoidance: about +1 per round of `limit` answers
        lim.on_success(0.1, saturated=True)
    assert 2.8 < lim.limit < 3.1
    for _ in range(2000):
        lim.on_success(0.1, saturated=True)
    assert lim.limit == 32  # never above the cap (--concurrency)
    lim.on_overload(now=200.0)
    assert lim.limit == 16
    lim.on_overload(now=300.0)
    lim.on_overload(now=400.0)
    lim.on_overload(now=500.0)
    lim.on_overload(now=600.0)
    lim.on_overload(now=700.0)
    assert lim.limit == 1  # never below one


def test_aimd_holds_when_the_server_queues() -> None:
    """Latency past the tolerance holds the limit (no cut: it may be the client's own lag)."""
    lim = AIMDLimit(64, initial=4)
    for _ in range(20):
        lim.on_success(0.1, saturated=True)
    grown = lim.limit
    assert grown == 24 and lim.baseline == pytest.approx(0.1)
    for _ in range(10):  # the server queues: latency five times the low-load one
        lim.on_success(0.5, saturated=True)
    held = lim.limit  # grew for the couple of answers the smoothed latency lags by, then held
    assert grown <= held <= grown + 3
    assert lim.held > 0
    for _ in range(10):  # latency comes back down: growth goes on
        lim.on_success(0.1, saturated=True)
    assert lim.baseline == pytest.approx(0.1)  # queueing it was: the baseline stays
    assert lim.limit > held
    assert lim.on_overload(now=100.0)  # overload signals still cut
    assert lim.limit < held


def test_aimd_learns_slower_requests() -> None:
    """Longer answers are slower at any limit: held two rounds, then the baseline is re-measured."""
    lim = AIMDLimit(64, initial=4)
    for _ in range(20):
        lim.on_success(0.1, saturated=True)
    for _ in range(5):
        lim.on_success(0.5, saturated=True)
    held = lim.limit
    for _ in range(2 * lim.slots):  # still slow: two rounds at the held limit
        lim.on_success(0.5, saturated=True)
    assert lim.baseline is not None and lim.baseline > 0.3
    assert lim.latency_holds()
    for _ in range(80):
        lim.on_success(0.5, saturated=True)
    assert lim.limit > held + 1  # growing again from the new baseline (one per round)


def test_fixed_limit() -> None:
    lim = AIMDLimit(12, adaptive=False)
    assert lim.limit == 12
    lim.on_success(0.1, saturated=True)
    assert not lim.on_overload(now=5.0)
    assert lim.limit == 12


async def test_limit_finds_server_capacity() -> None:
    """A server that does 8 at once: the limit rises from 4, keeps it full, stays far from 64."""
    app = FakeApp(latency=0.05, capacity=8)
    async with serve(app) as url:
        b = Balancer([url], "fake", "", concurrency=64, initial=4)
        started = time.monotonic()
        try:
            await asyncio.gather(*(b.complete(MESSAGES, PARAMS) for _ in range(400)))
        finally:
            await b.aclose()
        elapsed = time.monotonic() - started
    ep = b.endpoints[0]
    assert ep.calls == 400 and ep.failures == 0
    ideal = 400 / 8 * 0.05  # the server's own limit: 8 per 50 ms
    assert elapsed < 2 * ideal, elapsed  # the server was kept busy
    assert ep.peak_in_flight >= 8  # the limit grew past its start of 4 ...
    # ... but stopped near the knee: latency past twice the low-load latency holds it
    # (slow start overshoots by the few answers the smoothed latency lags behind, and a
    # held limit grows again slowly once the baseline is re-measured), far from 64.
    assert ep.peak_in_flight <= 40 and ep.limit.limit <= 40


async def test_overload_cuts_the_limit() -> None:
    """429s: the endpoint's limit is halved, the calls go to the other endpoint."""
    busy = FakeApp(latency=0.02, fault_rate=1.0, faults=["429"], retry_after=0.0)
    good = FakeApp(latency=0.02)
    async with serve(busy) as busy_url, serve(good) as good_url:
        b = Balancer([busy_url, good_url], "fake", "", concurrency=16, initial=16)
        try:
            done = await asyncio.gather(*(b.complete(MESSAGES, PARAMS) for _ in range(40)))
        finally:
            await b.aclose()
    assert len(done) == 40 and all(d.content for d in done)
    first, second = b.endpoints
    assert first.failures >= 1 and first.limit.limit <= 8
    assert not first.ejected  # 429 means busy, not broken
    assert second.failures == 0 and good.answered == 40


# --- ejection, re-probe, failover --------------------------------------------------------


async def test_ejection_and_reprobe() -> None:
    dead_port = free_port()
    dead_url = f"http://127.0.0.1:{dead_port}/v1"
    async with serve(FakeApp(latency=0.01)) as live_url:
        b = Balancer([dead_url, live_url], "fake", "", concurrency=4, eject_base=0.3)
        try:
            for _ in range(10):
                await b.complete(MESSAGES, PARAMS)
            dead, live = b.endpoints
            assert dead.ejected and dead.ejections == 1 and dead.failures >= 1
            assert "APIConnectionError" in (dead.last_error or "")
            assert live.calls == 10 and dead.calls <= 2
            assert b.failovers >= 1
            # nothing listens yet: the probe fails and the wait doubles
            await asyncio.sleep(0.35)
            await b.complete(MESSAGES, PARAMS)
            await asyncio.sleep(0.1)
            assert dead.ejected and dead.eject_for == pytest.approx(0.6)
            # the endpoint comes up: the next probe brings it back
            async with serve(FakeApp(latency=0.01), port=dead_port):
                deadline = time.monotonic() + 5
                while dead.ejected and time.monotonic() < deadline:
                    await b.complete(MESSAGES, PARAMS)
                    await asyncio.sleep(0.05)
                assert not dead.ejected
                calls = dead.calls
                await asyncio.gather(*(b.complete(MESSAGES, PARAMS) for _ in range(20)))
                assert dead.calls > calls  # it takes traffic again
        finally:
            await b.aclose()


async def test_all_endpoints_down_raises_retryable() -> None:
    b = Balancer([f"http://127.0.0.1:{free_port()}/v1"], "fake", "", concurrency=2)
    with pytest.raises(TransportError) as info:
        await b.complete(MESSAGES, PARAMS)
    assert info.value.kind == "connection" and info.value.retryable
    await b.aclose()


async def test_in_flight_calls_fail_over_when_an_endpoint_dies() -> None:
    """kill -9 one of two servers while calls are in flight on it: all calls still answer."""
    with FakeServerProc(latency=0.4) as doomed, FakeServerProc(latency=0.4) as other:
        client = endpoint_client(
            [doomed.base_url, other.base_url], "fake", "", concurrency=16, max_retries=0
        )
        balancer = client.transport
        assert isinstance(balancer, Balancer)
        for ep in balancer.endpoints:  # start full so both get calls at once
            ep.limit.limit = 16.0
        calls = [
            asyncio.ensure_future(client.text(MESSAGES, task="t", temperature=0.0, max_tokens=16))
            for _ in range(24)
        ]
        await asyncio.sleep(0.2)
        on_doomed = balancer.endpoints[0].in_flight
        assert on_doomed > 0
        doomed.proc.kill()
        replies = await asyncio.gather(*calls)  # max_retries=0: only failover can save them
        await client.aclose()
    assert len(replies) == 24 and all(r.text for r in replies)
    dead, alive = balancer.endpoints
    assert dead.ejected and dead.failures >= on_doomed
    assert balancer.failovers >= on_doomed
    assert alive.calls >= 24 - (dead.calls - dead.failures)


# --- a sick endpoint or a poison request ------------------------------------------------


def _asks(n: int, tag: str = "q") -> list[list[dict[str, str]]]:
    """``n`` different requests."""
    return [[{"role": "user", "content": f"{tag} {i}: say something."}] for i in range(n)]


async def test_poison_requests_fail_alone_and_never_eject_the_endpoint() -> None:
    """A fifth of the requests fail every time (keyed on their body): each fails with the
    server's status and message once it got the same answer twice while other requests
    were answered; the others are answered; the one endpoint stays in service with its
    limit."""
    app = FakeApp(latency=0.01, poison_rate=0.2, poison_seed=3)
    async with serve(app) as url:
        client = endpoint_client([url], "fake", "", concurrency=8, max_retries=4)
        client.backoff_base = 0.001
        results = await asyncio.gather(
            *(client.text(m, task="t", temperature=0, max_tokens=8) for m in _asks(120)),
            return_exceptions=True,
        )
        await client.aclose()
    failed = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, LLMError) for r in failed), failed
    assert len(failed) == len(app.poisoned) > 10  # about a fifth of 120
    for error in failed:
        assert isinstance(error, LLMError)
        assert error.message.startswith("InternalServerError: HTTP 500: poisoned request ")
        assert error.message.endswith(
            "(the same twice, while the server answered other requests: the request fails, "
            "not the server)"
        )
        assert error.usage.calls == app.poisoned[error.message.split()[5][:-1]] < 5
    sends = list(app.poisoned.values())
    assert sends.count(2) > len(sends) / 2  # most stop at the second identical answer
    balancer = client.transport
    assert isinstance(balancer, Balancer)
    ep = balancer.endpoints[0]
    assert ep.ejections == 0 and not ep.ejected
    assert ep.limit.limit >= 8  # a 500 is not overload: the limit was never cut


class SickApp(FakeApp):
    """Every chat request fails with a 500; ``/v1/models`` answers only while ``alive``."""

    alive = True

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        return web.json_response({"error": {"message": "engine died"}}, status=500)

    async def models(self, request: web.Request) -> web.Response:
        if not self.alive:
            return web.json_response({"error": {"message": "unhealthy"}}, status=503)
        return await super().models(request)


async def test_failures_of_different_requests_probe_the_endpoint_before_ejecting() -> None:
    """Retries of one request never count; three different requests failing in a row make
    a probe ask; a live endpoint stays (the requests were at fault), a dead one goes."""
    app = SickApp(latency=0.0)
    async with serve(app) as url:
        b = Balancer([url], "fake", "", concurrency=4, eject_after=3)
        ep = b.endpoints[0]
        (one,) = _asks(1, "same")
        for _ in range(6):  # one request, six times: one failure of one request
            with pytest.raises(TransportError):
                await b.complete(one, PARAMS)
        assert ep.consecutive_failures == 1 and ep.failures == 6
        for ask in _asks(2, "alive"):
            with pytest.raises(TransportError):
                await b.complete(ask, PARAMS)
        await asyncio.sleep(0.3)  # the probe answers
        assert not ep.ejected and ep.checks == 1 and ep.consecutive_failures == 0
        app.alive = False
        for ask in _asks(3, "dead"):
            with pytest.raises(TransportError):
                await b.complete(ask, PARAMS)
        await asyncio.sleep(0.3)  # the probe fails too: ejected
        assert ep.ejected and ep.ejections == 1 and ep.checks == 1
        await b.aclose()


def test_busy_is_not_broken() -> None:
    """A 429 or a 503 with Retry-After never counts toward ejection (no probe either)."""
    b = Balancer(["http://a/v1"], "m", "", concurrency=4, eject_after=2)
    ep = b.endpoints[0]
    for i in range(5):
        b._failed(ep, TransportError("http", "busy", retryable=True, status=429), f"k{i}")
        b._failed(
            ep,
            TransportError("http", "busy", retryable=True, status=503, retry_after=1.0),
            f"j{i}",
        )
    assert ep.consecutive_failures == 0 and not ep.checking and not ep.ejected
    assert ep.failures == 10


async def test_the_same_failure_on_two_endpoints_stops_the_retries() -> None:
    """Both endpoints fail a request with the same 500 and message: it fails at once, not
    after max_retries rounds; another request still goes through."""
    first, second = (FakeApp(latency=0.0, poison_rate=0.5, poison_seed=9) for _ in range(2))
    async with serve(first) as url_a, serve(second) as url_b:
        client = endpoint_client([url_a, url_b], "fake", "", concurrency=4, max_retries=4)
        client.backoff_base = 0.001
        asks = _asks(20)
        poisoned = [m for m in asks if first.poison_hash(_body(m)) is not None]
        clean = [m for m in asks if first.poison_hash(_body(m)) is None]
        assert poisoned and clean
        with pytest.raises(LLMError) as info:
            await client.text(poisoned[0], task="t", temperature=0, max_tokens=8)
        reply = await client.text(clean[0], task="t", temperature=0, max_tokens=8)
        await client.aclose()
    assert "HTTP 500: poisoned request" in info.value.message
    assert "the same from 2 endpoints: the request fails, not the servers" in info.value.message
    assert info.value.usage.calls == 1  # the client did not retry it
    assert first.requests + second.requests == 3  # one each, then the clean one
    assert reply.text


def _body(messages: list[dict[str, str]]) -> dict[str, Any]:
    """The body HTTPTransport sends for a text call of these tests."""
    return {
        "model": "fake",
        "stream": False,
        "messages": messages,
        "temperature": 0,
        "max_completion_tokens": 8,
    }


# --- settings --------------------------------------------------------------------------


def test_settings_several_endpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from graph.run import parse_args

    monkeypatch.delenv("REFED_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    s = parse_args(["--base-url", "http://a/v1", "--base-url", "http://b/v1"])
    assert s.base_urls == ["http://a/v1", "http://b/v1"]
    assert parse_args(["--base-url", "http://a/v1"]).base_url == "http://a/v1"
    listing = tmp_path / "endpoints.txt"
    listing.write_text("# replicas\nhttp://c/v1\n\nhttp://d/v1  # the second\nhttp://a/v1\n")
    s = parse_args(["--base-url", "http://a/v1", "--base-urls-file", str(listing)])
    assert s.base_urls == ["http://a/v1", "http://c/v1", "http://d/v1"]
    monkeypatch.setenv("OPENAI_BASE_URL", "http://x/v1, http://y/v1")
    assert RefedSettings().base_urls == ["http://x/v1", "http://y/v1"]
    monkeypatch.setenv("REFED_BASE_URL", "http://z/v1")
    assert RefedSettings().base_urls == ["http://z/v1"]
    listed = RefedSettings.model_validate({"base_url": ["http://p/v1", "http://q/v1"]})
    assert listed.base_url == "http://p/v1,http://q/v1"  # a TOML list


# --- end to end --------------------------------------------------------------------------


def test_run_survives_losing_an_endpoint(tmp_path: Path) -> None:
    """Two endpoints, one killed mid-run: the run finishes on the other, nothing lost or twice."""
    seeds = write_seeds(tmp_path / "seeds.jsonl", 12)
    out = tmp_path / "run"
    per_reference = 4
    with FakeServerProc(latency=0.1) as doomed, FakeServerProc(latency=0.1) as other:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "graph.run",
                "--seeds",
                str(seeds),
                "--base-url",
                doomed.base_url,
                "--base-url",
                other.base_url,
                "--model",
                "fake",
                "--out",
                str(out),
                "--per-reference",
                str(per_reference),
                "--concurrency",
                "4",
                "--workers",
                "3",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        samples = out / "samples.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if samples.exists() and samples.read_bytes().count(b"\n") >= 6:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the endpoint could be killed"
        served = doomed.stats()["requests"]
        assert served > 0  # it had its share of the work
        doomed.proc.kill()
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    accepted = list(Ledger(out / "samples.jsonl").read(Sample))
    rejected = (
        list(Ledger(out / "rejected.jsonl").read(Sample))
        if (out / "rejected.jsonl").exists()
        else []
    )
    ids = [s.sample_id for s in accepted + rejected]
    assert len(ids) == 12 * per_reference
    assert len(set(ids)) == len(ids)
    assert not [s for s in rejected if s.status == "failed"]  # no call lost to the dead server
    assert len(list(Ledger(out / "references.jsonl").read(ReferenceDone))) == 12
    assert f"endpoint {doomed.base_url}" in stderr and "ejected" in stderr
    assert f"endpoint {other.base_url}" in stderr


def test_a_busy_client_does_not_hold_the_limit_on_its_own_latency() -> None:
    # Latency triples while the endpoint is full: held when the client is idle (the
    # server may be queueing), grown on when the client's own loop runs late.
    def run(client_busy: bool) -> float:
        limit = AIMDLimit(128, initial=4)
        for _ in range(40):
            limit.on_success(0.2, saturated=True)
        at = limit.limit
        for _ in range(10):
            limit.on_success(0.9, saturated=True, client_busy=client_busy)
        return limit.limit - at

    idle, busy = run(client_busy=False), run(client_busy=True)
    assert idle < 5  # grew until the smoothed latency passed twice the baseline, then held
    assert busy == 10  # slow start went on: one slot per answer


def test_loop_lag_sees_a_blocked_loop() -> None:
    async def go() -> tuple[bool, bool]:
        lag = LoopLag()
        lag.ensure_running()
        await asyncio.sleep(0.3)
        idle = lag.busy
        for _ in range(6):
            time.sleep(0.06)  # the loop's own work keeps its timers late
            await asyncio.sleep(0)
        busy = lag.busy
        lag.stop()
        return idle, busy

    idle, busy = asyncio.run(go())
    assert not idle and busy
