"""A bounded load test of the service: N requests at concurrency C, latency percentiles.

Starts the fake LLM server and ``python -m serve`` on loopback, sends ``--requests``
synthesis requests (distinct references, so each pays for its feedback once) with
``--concurrency`` in flight, then prints a table and stops both.

    python -m bench.load_service --requests 200 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import free_port

REPO = Path(__file__).resolve().parents[1]


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def load(url: str, requests: int, concurrency: int, samples: int) -> dict[str, object]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    calls = 0

    async with httpx.AsyncClient(
        timeout=300, limits=httpx.Limits(max_connections=concurrency)
    ) as http:

        async def one(i: int) -> None:
            nonlocal calls
            body = {
                "instruction": f"Explain topic number {i} to a beginner in three steps.",
                "response": f"Topic {i}: first define it, then give an example, then a "
                "common mistake.",
                "samples": samples,
            }
            async with gate:
                t0 = time.perf_counter()
                r = await http.post(url + "/v1/synthesize", json=body)
                latencies.append(time.perf_counter() - t0)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                calls += int(r.json()["usage"]["calls"])

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "rps": requests / wall,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p90_ms": 1000 * percentile(latencies, 90),
        "p99_ms": 1000 * percentile(latencies, 99),
        "max_ms": 1000 * max(latencies),
        "mean_ms": 1000 * statistics.fmean(latencies),
        "statuses": statuses,
        "llm_calls": calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--latency", type=float, default=0.05, help="fake LLM latency (s)")
    args = parser.parse_args()

    fake_port, svc_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="refed-load-"))
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.fake_server",
            "--port",
            str(fake_port),
            "--latency",
            str(args.latency),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "REFED_MAX_IN_FLIGHT_REQUESTS": str(args.concurrency),
        "REFED_CONCURRENCY": "256",
    }
    svc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serve",
            "--base-url",
            f"http://127.0.0.1:{fake_port}/v1",
            "--model",
            "fake",
            "--port",
            str(svc_port),
            "--service-db",
            str(tmp / "svc.sqlite"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(f"http://127.0.0.1:{fake_port}/v1/models", fake)
        _wait(f"http://127.0.0.1:{svc_port}/healthz", svc)
        result = asyncio.run(
            load(f"http://127.0.0.1:{svc_port}", args.requests, args.concurrency, args.samples)
        )
    finally:
        for proc in (svc, fake):
            proc.terminate()
            proc.wait(30)
    statuses: dict[int, int] = result["statuses"]  # type: ignore[assignment]
    errors = sum(n for code, n in statuses.items() if code != 200)
    print(
        "| requests | concurrency | samples/req | fake LLM latency | wall s | req/s | "
        "p50 ms | p90 ms | p99 ms | max ms | errors | LLM calls |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.requests} | {args.concurrency} | {args.samples} | "
        f"{1000 * args.latency:.0f} ms | {result['wall_s']:.1f} | {result['rps']:.1f} | "
        f"{result['p50_ms']:.0f} | {result['p90_ms']:.0f} | {result['p99_ms']:.0f} | "
        f"{result['max_ms']:.0f} | {errors} | {result['llm_calls']} |"
    )
    print(f"statuses: {result['statuses']}")


if __name__ == "__main__":
    main()
