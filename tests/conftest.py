"""Shared fixtures: paths, the fake OpenAI-compatible server, the real vLLM CPU server."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testing.servers import FakeServer
from testing.servers import free_port as free_port  # re-exported for the tests
from tests.pgcluster import pg_cluster as pg_cluster  # the throwaway Postgres (session)
from tests.pgcluster import pg_dsn as pg_dsn

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (expected ../shared/data)")
    return SHARED_DATA


FakeServerProc = FakeServer
"""The fake server in its own process (``testing.servers.FakeServer``, as the benchmarks use it)."""


@pytest.fixture
def fake_server() -> Iterator[FakeServerProc]:
    """A fresh fake server (20 ms latency) per test, so its request counts are the test's."""
    server = FakeServerProc(latency=0.02)
    yield server
    server.stop()


@pytest.fixture
def slow_fake_server() -> Iterator[FakeServerProc]:
    server = FakeServerProc(latency=0.3)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vllm_base_url() -> Iterator[str]:
    """The real vLLM CPU server: REFED_TEST_BASE_URL (started by .ci/run), else one we start."""
    given = os.environ.get("REFED_TEST_BASE_URL")
    if given:
        wait_http(given.rstrip("/") + "/models", timeout=300)
        yield given
        return
    if _VLLM_FAILED:  # pytest retries a failed session fixture per test: fail at once
        pytest.fail(f"the vLLM CPU server did not start earlier in this session: {_VLLM_FAILED[0]}")
    from embedded.server import EmbeddedServer

    server = EmbeddedServer()
    try:
        server.start()
    except Exception as exc:
        _VLLM_FAILED.append(repr(exc)[:2000])
        raise
    try:
        yield server.base_url
    finally:
        server.stop()


_VLLM_FAILED: list[str] = []
"""Why the session's vLLM server did not start (empty: not tried, or it started)."""
