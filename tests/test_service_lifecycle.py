"""The service process under SIGTERM and under a faulty LLM server (fake server)."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve.service import llm_failure_status

from .conftest import FakeServerProc
from .test_service import AUTH, PAIR, Service


def _post_in_thread(url: str, body: dict[str, Any], out: list[Any]) -> threading.Thread:
    def go() -> None:
        try:
            out.append(httpx.post(url + "/v1/synthesize", json=body, headers=AUTH, timeout=120))
        except httpx.HTTPError as exc:
            out.append(exc)

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def _wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _refused(url: str) -> bool:
    try:
        httpx.get(url + "/healthz", timeout=1)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


def test_sigterm_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    """SIGTERM during a request: no new connection is accepted, the request still ends
    with 200 and its samples, and the process exits 0 well within shutdown_grace."""
    fake = FakeServerProc(latency=0.6)
    svc = Service(fake.base_url, "fake", tmp_path, REFED_SHUTDOWN_GRACE="30")
    try:
        results: list[Any] = []
        started = time.monotonic()
        thread = _post_in_thread(svc.url, {**PAIR, "samples": 2}, results)
        _wait_for(lambda: svc.metric("refed_in_flight") >= 1, 30, "the request in flight")
        time.sleep(1.0)  # well into the feedback calls
        svc.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _wait_for(lambda: _refused(svc.url), 5, "new connections to be refused")
        assert thread.is_alive(), "the request ended before the shutdown began"
        thread.join(60)
        code = svc.proc.wait(30)
        exited = time.monotonic()
        response = results[0]
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["samples"]) + len(body["rejected"]) == 2
        assert code == 0, svc.log.read_text()[-2000:]
        assert exited - signalled < 30
        assert exited - started > 2.4  # it really was a slow request (>= 4 calls at 0.6 s)
        log = svc.log.read_text()
        assert "service_stopped" in log and "shutdown_cancelled" not in log
    finally:
        if svc.proc.poll() is None:
            svc.stop()
        fake.stop()


def test_sigterm_cancels_what_outlasts_the_grace_and_keeps_the_feedback(tmp_path: Path) -> None:
    """shutdown_grace=1 with a request that needs many more seconds: the process exits 0
    about a second after SIGTERM; the feedback it had computed is still cached after a
    restart, so the next request for the reference makes no feedback call."""
    fake = FakeServerProc(latency=1.0)
    ref_id = "grace-ref"
    pair = {**PAIR, "id": ref_id, "samples": 3}
    svc = Service(fake.base_url, "fake", tmp_path, REFED_SHUTDOWN_GRACE="1")
    try:
        results: list[Any] = []
        thread = _post_in_thread(svc.url, pair, results)

        def cached() -> bool:
            r = httpx.get(f"{svc.url}/v1/feedback/{ref_id}", headers=AUTH, timeout=5)
            return r.status_code == 200

        _wait_for(cached, 60, "the feedback to be cached")
        assert svc.metric("refed_in_flight") == 1  # candidates still to answer and judge
        svc.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = svc.proc.wait(30)
        took = time.monotonic() - signalled
        thread.join(30)
        assert code == 0, svc.log.read_text()[-2000:]
        assert took < 1 + 4, took  # the grace, then cancel and close
        assert "shutdown_cancelled" in svc.log.read_text()
        assert not isinstance(results[0], httpx.Response) or results[0].status_code != 200
    finally:
        if svc.proc.poll() is None:
            svc.stop()
        fake.stop()

    fast = FakeServerProc(latency=0.01)
    again = Service(fast.base_url, "fake", tmp_path)
    try:
        r = httpx.get(f"{again.url}/v1/feedback/{ref_id}", headers=AUTH)
        assert r.status_code == 200 and r.json()["reference_id"] == ref_id
        r = httpx.post(again.url + "/v1/synthesize", json=pair, headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["feedback_cached"] is True
        assert r.json()["usage"]["feedback_calls"] == 0
    finally:
        again.stop()
        fast.stop()


@pytest.mark.parametrize(
    ("error", "status", "retry"),
    [
        ("reference_analysis failed: instruction: connection: APIConnectionError: x", 503, True),
        ("respond: http: RateLimitError: HTTP 429: slow down", 503, True),
        ("synthesis: http: InternalServerError: HTTP 503: overloaded", 503, True),
        ("feedback_distillation failed: timeout: APITimeoutError: no answer in 1 s", 504, False),
        ("respond: http: InternalServerError: HTTP 500: boom", 502, False),
        ("respond: http: unreadable answer (HTTP 200): b'<html>'", 502, False),
        ("metric_judge: parse: judge: (root): Invalid JSON", 502, False),
        ("respond: length: answer cut off at max_tokens", 502, False),
        ("synthesis produced no new instruction", 502, False),
    ],
)
def test_llm_failure_status(error: str, status: int, retry: bool) -> None:
    got, retry_after = llm_failure_status(error)
    assert got == status
    assert (retry_after is not None) == retry


def _gauges(url: str) -> dict[str, float]:
    want = ("refed_asyncio_tasks", "process_resident_memory_bytes", "refed_in_flight")
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in want:
            out[name] = float(value)
    return out


async def _hammer(
    url: str, n: int, start: int, parallel: int, statuses: dict[int, int], problems: list[str]
) -> None:
    gate = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(headers=AUTH, timeout=60) as http:

        async def one(i: int) -> None:
            body = {
                "instruction": f"{PAIR['instruction']} (variant {i % 40})",
                "response": PAIR["response"],
                "samples": 1,
            }
            async with gate:
                if i % 10 == 0:
                    async with http.stream("POST", url + "/v1/synthesize/stream", json=body) as r:
                        text = (await r.aread()).decode()
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 200 and (
                        "event: error" in text
                        or not text.rstrip().split("\n\n")[-1].startswith("event: done")
                    ):
                        problems.append(f"stream {i}: {text[-300:]}")
                    return
                r = await http.post(url + "/v1/synthesize", json=body)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                return
            if r.status_code not in (502, 503, 504):
                problems.append(f"{i}: {r.status_code} {r.text[:300]}")
                return
            err = r.json()
            if err.get("error") != "llm_failed" or not err.get("detail"):
                problems.append(f"{i}: {r.status_code} without a reason: {r.text[:300]}")
            if r.status_code == 503 and "retry-after" not in r.headers:
                problems.append(f"{i}: 503 without Retry-After")

        await asyncio.gather(*(one(i) for i in range(start, start + n)))


def test_llm_faults_give_only_502_503_504_and_leak_nothing(tmp_path: Path) -> None:
    """1,000 requests against an LLM server that fails 20% of its calls (every fault kind):
    each answer is 200 or 502/503/504 with a reason (503 with Retry-After); asyncio tasks
    and RSS come back to where they were after the first 200 requests."""
    fake = FakeServerProc(latency=0.005, fault_rate=0.2, fault_seed=1, hang=2, retry_after=0.2)
    svc = Service(
        fake.base_url,
        "fake",
        tmp_path,
        REFED_TIMEOUT="0.5",
        REFED_MAX_RETRIES="1",
        REFED_MAX_REVISIONS="0",
        REFED_CONCURRENCY="64",
        REFED_MAX_IN_FLIGHT_REQUESTS="64",
        REFED_LOG_LEVEL="warning",
    )
    try:
        statuses: dict[int, int] = {}
        problems: list[str] = []
        started = time.monotonic()
        asyncio.run(_hammer(svc.url, 200, 0, 24, statuses, problems))
        before = _gauges(svc.url)
        asyncio.run(_hammer(svc.url, 800, 200, 24, statuses, problems))
        _wait_for(lambda: _gauges(svc.url)["refed_in_flight"] == 0, 10, "requests to end")
        after = _gauges(svc.url)
        took = time.monotonic() - started
        stats = httpx.get(fake.base_url.removesuffix("/v1") + "/stats").json()
        figures = {
            "statuses": dict(sorted(statuses.items())),
            "seconds": round(took, 1),
            "tasks": [before["refed_asyncio_tasks"], after["refed_asyncio_tasks"]],
            "rss_mb": [
                round(before["process_resident_memory_bytes"] / 2**20, 1),
                round(after["process_resident_memory_bytes"] / 2**20, 1),
            ],
            "llm_requests": stats["requests"],
            "faults": stats["faults"],
        }
        print("service under faults:", json.dumps(figures))
        assert not problems, problems[:5]
        assert sum(statuses.values()) == 1000
        assert set(statuses) <= {200, 502, 503, 504}, statuses
        assert statuses.get(200, 0) > 0 and sum(statuses.get(s, 0) for s in (502, 503, 504)) > 0
        assert len(stats["faults"]) == 9  # every kind was injected
        assert after["refed_asyncio_tasks"] <= before["refed_asyncio_tasks"] + 2, figures
        growth = after["process_resident_memory_bytes"] - before["process_resident_memory_bytes"]
        assert growth < 40 * 2**20, figures
    finally:
        svc.stop()
        fake.stop()
