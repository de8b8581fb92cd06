"""The HTTP service as a real process on loopback: against the real vLLM CPU server for
synthesis, and against the fake server for limits and the property-based API test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from .conftest import REPO, FakeServerProc, free_port, wait_http

TOKEN = "test-token-4b1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAIR = {
    "instruction": "How do I keep cut apples from turning brown?",
    "response": "Dip the slices in water with a little lemon juice: the acid slows the enzyme "
    "that browns them. Pat them dry and keep them cold in a closed box.",
}


class Service:
    def __init__(self, base_url: str, model: str, tmp: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "service.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serve",
                "--base-url",
                base_url,
                "--model",
                model,
                "--port",
                str(self.port),
                "--service-db",
                str(tmp / "service.sqlite"),
            ],
            cwd=REPO,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "REFED_SERVICE_TOKEN": TOKEN, **env},
        )
        wait_http(self.url + "/healthz", timeout=60, proc=self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)

    def metric(self, name: str, **labels: str) -> float:
        want = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
        )
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0


@pytest.fixture(scope="module")
def vllm_service(vllm_base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(
        vllm_base_url,
        "smollm2",
        tmp_path_factory.mktemp("svc"),
        REFED_MAX_TOKENS="160",
        REFED_MAX_IN_FLIGHT_REQUESTS="1",
        REFED_MAX_SAMPLES_PER_REQUEST="3",
        REFED_TEMPERATURE="0.7",
    )
    yield svc
    svc.stop()


@pytest.mark.vllm
@pytest.mark.slow
def test_synthesize_stream_and_cache_on_real_vllm(vllm_service: Service) -> None:
    url = vllm_service.url
    first = httpx.post(
        url + "/v1/synthesize", json={**PAIR, "samples": 1}, headers=AUTH, timeout=600
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["feedback_cached"] is False
    assert len(body["samples"]) + len(body["rejected"]) == 1
    assert body["usage"]["feedback_calls"] == 3  # 2 analysis + 1 distillation
    for s in body["samples"] + body["rejected"]:
        assert s["reference_id"] == body["reference_id"]
        assert s["provenance"]["model"] == "smollm2"
        assert s["status"] in ("accepted", "rejected", "failed")

    fb = httpx.get(url + f"/v1/feedback/{body['reference_id']}", headers=AUTH)
    assert fb.status_code == 200 and fb.json()["feedback"]["reference_id"] == body["reference_id"]

    # The second request for the same reference makes no analysis or distillation call.
    calls_before = vllm_service.metric("refed_llm_calls_total")
    events: list[tuple[str, dict]] = []
    with httpx.stream(
        "POST",
        url + "/v1/synthesize/stream",
        json={**PAIR, "samples": 1},
        headers=AUTH,
        timeout=600,
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                events.append((name, json.loads(line[6:])))
    names = [n for n, _ in events]
    assert names[-1] == "done" and "progress" in names
    assert names.count("sample") == 1
    done = events[-1][1]
    assert done["feedback_cached"] is True
    assert done["usage"]["feedback_calls"] == 0
    assert "reference_analysis" not in [d["node"] for n, d in events if n == "progress"]
    assert vllm_service.metric("refed_llm_calls_total") - calls_before == done["usage"]["calls"]
    assert vllm_service.metric("refed_feedback_cache_total", result="hit") == 1
    assert vllm_service.metric("refed_feedback_cache_total", result="miss") == 1
    assert vllm_service.metric("refed_requests_total", route="/v1/synthesize", status="200") == 1


@pytest.mark.vllm
def test_refusals(vllm_service: Service) -> None:
    url = vllm_service.url
    r = httpx.post(url + "/v1/synthesize", json=PAIR)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = httpx.post(url + "/v1/synthesize", json=PAIR, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = httpx.post(
        url + "/v1/synthesize",
        content=b"{not json",
        headers={**AUTH, "content-type": "application/json"},
    )
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    r = httpx.post(url + "/v1/synthesize", json={"instruction": "x"}, headers=AUTH)
    assert r.status_code == 422
    assert {"field": "response", "message": "Field required"} in r.json()["detail"]
    r = httpx.post(url + "/v1/synthesize", json={**PAIR, "samples": 4}, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["detail"] == [{"field": "samples", "message": "at most 3 samples per request"}]
    r = httpx.post(
        url + "/v1/synthesize", json={**PAIR, "options": {"temperature": 9}}, headers=AUTH
    )
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "options.temperature"
    big = {**PAIR, "response": "x" * 1_100_000}
    r = httpx.post(url + "/v1/synthesize", json=big, headers=AUTH)
    assert r.status_code == 413
    assert vllm_service.metric("refed_requests_total", route="/v1/synthesize", status="401") == 2


@pytest.mark.vllm
@pytest.mark.slow
def test_requests_over_the_in_flight_limit_get_503(vllm_service: Service) -> None:
    """max_in_flight_requests=1: a second request while one runs is refused with Retry-After."""
    url = vllm_service.url
    results: list[httpx.Response] = []
    pair = {**PAIR, "instruction": PAIR["instruction"] + " (limit test)", "samples": 1}
    first = threading.Thread(
        target=lambda: results.append(
            httpx.post(url + "/v1/synthesize", json=pair, headers=AUTH, timeout=600)
        )
    )
    first.start()
    deadline = 0
    while vllm_service.metric("refed_in_flight") < 1 and deadline < 200:
        threading.Event().wait(0.05)
        deadline += 1
    second = httpx.post(url + "/v1/synthesize", json={**PAIR, "samples": 1}, headers=AUTH)
    first.join()
    assert second.status_code == 503
    assert second.headers["retry-after"] == "1"
    assert results[0].status_code == 200
    assert vllm_service.metric("refed_refused_total", reason="in_flight") == 1


def test_readyz_reports_a_dead_llm_server(tmp_path: Path) -> None:
    svc = Service(f"http://127.0.0.1:{free_port()}/v1", "none", tmp_path)
    try:
        r = httpx.get(svc.url + "/readyz")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert httpx.get(svc.url + "/healthz").json()["status"] == "ok"
        r = httpx.post(svc.url + "/v1/synthesize", json=PAIR, headers=AUTH, timeout=60)
        assert r.status_code == 503, r.text  # the LLM server is down: not a 500
        assert r.json()["error"] == "llm_failed" and "connection" in r.json()["detail"]
        assert TOKEN not in svc.log.read_text()
    finally:
        svc.stop()


def test_readyz_runs_the_preflight_check_and_refusals_are_502(tmp_path: Path) -> None:
    """Wrong key, then a model the server does not serve: the service starts, /readyz says
    what is wrong, and a request gets a 502 with the reason (never a 500); once fixed, 200."""
    fake = FakeServerProc(latency=0.0, models=["smollm2"], api_key="sk-llm-right-1234")
    svc = Service(fake.base_url, "fake", tmp_path, REFED_API_KEY="sk-llm-wrong-5678")
    try:
        r = httpx.get(svc.url + "/readyz", timeout=30)
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert f"the LLM server at {fake.base_url} refused the API key (HTTP 401" in r.text
        r = httpx.post(svc.url + "/v1/synthesize", json=PAIR, headers=AUTH, timeout=60)
        assert r.status_code == 502 and r.json()["error"] == "llm_failed", r.text
        assert "refused the API key" in r.json()["detail"]
        fake.require_key(None)  # the key problem fixed: the model is the next one
        r = httpx.get(svc.url + "/readyz", timeout=30)
        assert r.status_code == 503
        assert "does not serve model 'fake'; it serves: smollm2" in r.json()["detail"]
        r = httpx.post(svc.url + "/v1/synthesize", json=PAIR, headers=AUTH, timeout=60)
        assert r.status_code == 502 and "it serves: smollm2" in r.json()["detail"], r.text
        fake.serve_models("fake")
        assert httpx.get(svc.url + "/readyz", timeout=30).status_code == 200
        r = httpx.post(svc.url + "/v1/synthesize", json=PAIR, headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        assert "llm_preflight_failed" in svc.log.read_text()  # the start-up check said so
        assert "sk-llm-wrong-5678" not in svc.log.read_text()
    finally:
        svc.stop()
        fake.stop()


# --- property-based: no input makes the service answer 5xx (fake LLM server) ---------------


@pytest.fixture(scope="module")
def fake_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    fake = FakeServerProc(latency=0.001)
    svc = Service(
        fake.base_url, "fake", tmp_path_factory.mktemp("prop"), REFED_MAX_SAMPLES_PER_REQUEST="3"
    )
    yield svc
    svc.stop()
    fake.stop()


def test_api_never_answers_5xx(fake_service: Service) -> None:
    """schemathesis generates bodies from the OpenAPI spec; none may get a 5xx."""
    api = schemathesis.openapi.from_url(fake_service.url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1/synthesize",
        "/v1/synthesize/stream",
        "/v1/feedback/{reference_id}",
        "/readyz",
    }
    checked = 0
    for op in operations:

        @given(case=op.as_strategy())
        @settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case: schemathesis.Case) -> None:
            nonlocal checked
            response = case.call(headers=AUTH, timeout=60)
            checked += 1
            assert response.status_code < 500, (case.path, case.body, response.text)

        check()
    assert checked >= 25
