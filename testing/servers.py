"""The fake OpenAI-compatible server in its own process, and sockets for tests.

:class:`FakeServer` starts ``python -m testing.fake_server`` on a free port and drives it
(its ``/stats``, the last requests, its fault and admin switches); the tests and the
benchmarks both use it. :func:`blackhole` is an address whose connections never open.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def blackhole() -> Iterator[str]:
    """A base URL whose connections never open (the accept queue of its port is full), as
    to a host behind a firewall that drops them."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    held = [server]
    try:
        for _ in range(3):
            c = socket.socket()
            held.append(c)
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(("127.0.0.1", port))
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeServer:
    """``testing.fake_server`` in its own process, for one measurement or one test.

    ``fault_rate``, ``faults``, ``fault_seed``, ``down_after``, ``hang`` and
    ``retry_after`` are the server's fault-injection flags, ``poison_rate`` and
    ``poison_seed`` its poison requests, ``models`` and ``api_key`` what it serves and
    to whom (see ``testing.fake_server``); ``extra_args`` passes any other flag through.
    """

    def __init__(
        self,
        latency: float,
        *,
        fault_rate: float = 0.0,
        faults: Sequence[str] | None = None,
        fault_seed: int | None = None,
        down_after: int | None = None,
        hang: float | None = None,
        retry_after: float | None = None,
        poison_rate: float | None = None,
        poison_seed: int | None = None,
        models: Sequence[str] | None = None,
        api_key: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.api_key = api_key
        cmd = [
            sys.executable,
            "-m",
            "testing.fake_server",
            "--port",
            str(self.port),
            "--latency",
            str(latency),
        ]
        if fault_rate:
            cmd += ["--fault-rate", str(fault_rate)]
        if faults is not None:
            cmd += ["--faults", ",".join(faults)]
        for flag, value in (
            ("--fault-seed", fault_seed),
            ("--down-after", down_after),
            ("--hang", hang),
            ("--retry-after", retry_after),
            ("--poison-rate", poison_rate),
            ("--poison-seed", poison_seed),
            ("--api-key", api_key),
            ("--models", ",".join(models) if models else None),
        ):
            if value is not None:
                cmd += [flag, str(value)]
        self.proc = subprocess.Popen(
            [*cmd, *extra_args],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.root_url}/stats", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("fake server did not start")
            time.sleep(0.05)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.root_url}/stats", timeout=10).json())

    def requests(self) -> list[dict[str, Any]]:
        """The last chat request bodies it answered (at most 50), oldest first."""
        return list(httpx.get(f"{self.root_url}/admin/last", timeout=10).json())

    def down(self, seconds: float | None = None) -> None:
        """Drop every chat request from now on (for ``seconds``, or until :meth:`up`)."""
        params = {"for": str(seconds)} if seconds is not None else None
        httpx.post(f"{self.root_url}/admin/down", params=params, timeout=10).raise_for_status()

    def up(self) -> None:
        """Answer again (also ends ``down_after``)."""
        httpx.post(f"{self.root_url}/admin/up", timeout=10).raise_for_status()

    def serve_models(self, *models: str) -> None:
        """Serve these models from now on (a chat request for another gets a 404)."""
        url = f"{self.root_url}/admin/models"
        httpx.post(url, params={"set": ",".join(models)}, timeout=10).raise_for_status()

    def require_key(self, key: str | None) -> None:
        """Answer 401 to requests without this bearer token from now on (None: to none)."""
        params = {"set": key} if key else None
        httpx.post(f"{self.root_url}/admin/key", params=params, timeout=10).raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
