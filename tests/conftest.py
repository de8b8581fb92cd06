"""Shared fixtures: paths, the fake OpenAI-compatible server, the real vLLM CPU server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.common import free_port

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


class FakeServerProc:
    def __init__(self, latency: float) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.fake_server",
                "--port",
                str(self.port),
                "--latency",
                str(latency),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_http(f"http://127.0.0.1:{self.port}/v1/models", proc=self.proc)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, float]:
        return dict(httpx.get(f"http://127.0.0.1:{self.port}/stats").json())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


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
    from embedded.server import EmbeddedServer

    with EmbeddedServer() as server:
        yield server.base_url
