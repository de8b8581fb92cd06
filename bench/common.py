"""Shared pieces of the benchmarks: the fake server in its own process, seeds, versions.

Every measured client runs in its own process (``python -m bench.<name> _child ...``)
so its ``getrusage`` CPU and peak RSS are its own; the fake server runs in another
process and reports its own CPU at ``/stats``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]

VERSIONS = (
    "langgraph",
    "langgraph-checkpoint",
    "langgraph-checkpoint-sqlite",
    "langchain-core",
    "langchain-openai",
    "openai",
    "aiohttp",
    "httpx",
    "pydantic",
    "aiosqlite",
    "uvloop",
)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "cpu_pressure_at_start": cpu_pressure(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def cpu_pressure() -> float | None:
    """Share of the last 10 s some task waited for a CPU (Linux PSI): how busy the box is."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(first.split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


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
    """``bench.fake_server`` in its own process, for one measurement or one test.

    ``fault_rate``, ``faults``, ``fault_seed``, ``down_after``, ``hang`` and
    ``retry_after`` are the server's fault-injection flags, ``poison_rate`` and
    ``poison_seed`` its poison requests, ``models`` and ``api_key`` what it serves and
    to whom (see ``bench.fake_server``); ``extra_args`` passes any other flag through.
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
            "bench.fake_server",
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


_WORDS = [
    "garden",
    "soil",
    "water",
    "light",
    "season",
    "plant",
    "root",
    "leaf",
    "budget",
    "plan",
    "team",
    "code",
    "test",
    "data",
    "model",
    "river",
    "bridge",
    "travel",
    "museum",
    "recipe",
    "flour",
    "oven",
    "history",
    "letter",
    "design",
    "colour",
    "method",
    "rule",
    "market",
    "price",
    "risk",
    "energy",
    "battery",
    "sensor",
    "signal",
    "network",
    "memory",
    "story",
    "chapter",
    "voice",
]


def _text(i: int, words: int, salt: str) -> str:
    n = len(_WORDS)
    return " ".join(_WORDS[(i * 7 + j * (i % 5 + 1) + len(salt)) % n] for j in range(words))


def write_seeds(path: Path, n: int) -> Path:
    """``n`` distinct references of realistic size (instruction ~60 words, answer ~350)."""
    with path.open("w") as fh:
        for i in range(n):
            rec = {
                "id": f"bench-{i:06d}",
                "instruction": f"Task {i}: " + _text(i, 60, "i") + "?",
                "response": f"Answer {i}. " + _text(i, 350, "r") + ".",
            }
            fh.write(json.dumps(rec) + "\n")
    return path


def run_child(module: str, args: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``python -m module _child ARGS`` and return the JSON it prints last on stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", module, "_child", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{module} child failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n"
            f"{proc.stdout[-1000:]}"
        )
    return dict(json.loads(lines[-1]))


def rusage_self() -> dict[str, float]:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children, e.g. --processes
    return {
        "cpu": ru.ru_utime + ru.ru_stime,
        "maxrss_mb": ru.ru_maxrss / 1024,
        "children_cpu": kids.ru_utime + kids.ru_stime,
        "children_maxrss_mb": kids.ru_maxrss / 1024,
    }


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def start_workers(
    n: int, run_args: Sequence[str], *, store: str, env: dict[str, str] | None = None
) -> list[subprocess.Popen[str]]:
    """``n`` ``python -m graph.run`` workers on one run kept in Postgres (graph/pgstore.py).

    ``run_args`` are the run's flags (``--seeds``, ``--base-url``, ``--out``, …), the same for
    every worker: the run is named by ``--out`` in the store, and the workers share its
    references through leases. Wait for them with :func:`wait_workers`.
    """
    return [
        subprocess.Popen(
            [sys.executable, "-m", "graph.run", *run_args, "--store", store],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        for _ in range(n)
    ]


def wait_workers(procs: Sequence[subprocess.Popen[str]], timeout: float = 1800) -> list[str]:
    """Wait for every worker; their stderr, in order. A worker that failed raises."""
    errors = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        if proc.returncode != 0:
            raise RuntimeError(f"graph.run worker exited with {proc.returncode}:\n{err[-3000:]}")
        errors.append(err)
    return errors
