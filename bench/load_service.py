"""The service under sustained load: N requests at concurrency C, latency, errors, memory.

Starts the fake LLM server and ``python -m serve`` on loopback, sends ``--requests``
synthesis requests (distinct references, so each pays for its feedback once) with
``--concurrency`` in flight, then prints a table and stops both. Two phases, each with
a fresh fake server and service:

- ``clean``: the LLM answers everything. Every answer must be a 200;
- ``faults``: the LLM fails ``--fault-rate`` of its calls (per attempt) with a 500 or a
  503. Every answer must be a 200, or a 502/503/504 naming the LLM failure
  (``llm_failed`` and a reason), never a 500 or another status.

Per phase: wall time, p50/p90/p99 latency, the answers by status, the errors that are
not the LLM's, and the service's resident memory (``VmRSS``) after the first 200 and
after the last request, to show it flat after warm-up.

    python -m bench.load_service                                   # 1,000 at 32, both phases
    python -m bench.load_service --requests 200 --phases clean
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO, machine, table, versions
from testing.servers import FakeServer, free_port


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


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (MB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def load(url: str, requests: int, concurrency: int, samples: int, pid: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    problems: list[str] = []
    rss: dict[int, float] = {}
    calls = 0
    done = 0

    async with httpx.AsyncClient(
        timeout=300, limits=httpx.Limits(max_connections=concurrency)
    ) as http:

        async def one(i: int) -> None:
            nonlocal calls, done
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
            elif r.status_code in (502, 503, 504):
                err = r.json()
                if err.get("error") != "llm_failed" or not err.get("detail"):
                    problems.append(f"{r.status_code} without the LLM's reason: {r.text[:200]}")
                if r.status_code == 503 and "retry-after" not in r.headers:
                    problems.append(f"503 without Retry-After: {r.text[:200]}")
            else:
                problems.append(f"{r.status_code}: {r.text[:200]}")
            done += 1
            if done == 200 or done == requests:  # after warm-up, and at the end
                rss[done] = rss_mb(pid)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - t0
    return {
        "wall_s": round(wall, 2),
        "rps": round(requests / wall, 2),
        "p50_ms": round(1000 * percentile(latencies, 50)),
        "p90_ms": round(1000 * percentile(latencies, 90)),
        "p99_ms": round(1000 * percentile(latencies, 99)),
        "max_ms": round(1000 * max(latencies)),
        "mean_ms": round(1000 * statistics.fmean(latencies)),
        "statuses": dict(sorted(statuses.items())),
        "not_llm_errors": len(problems),
        "problems": problems[:10],
        "rss_mb": {str(k): round(v, 1) for k, v in sorted(rss.items())},
        "llm_calls": calls,
    }


def phase(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One phase with a fresh fake LLM server and service."""
    faulty = name == "faults"
    svc_port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="refed-load-"))
    env = {
        **os.environ,
        "REFED_MAX_IN_FLIGHT_REQUESTS": str(args.concurrency),
        "REFED_CONCURRENCY": "256",
        "REFED_LOG_LEVEL": "warning",
    }
    with FakeServer(
        args.latency,
        fault_rate=args.fault_rate if faulty else 0.0,
        faults=["500", "503"] if faulty else None,
        fault_seed=7 if faulty else None,
    ) as fake:
        svc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serve",
                "--base-url",
                fake.base_url,
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
            _wait(f"http://127.0.0.1:{svc_port}/healthz", svc)
            result = asyncio.run(
                load(
                    f"http://127.0.0.1:{svc_port}",
                    args.requests,
                    args.concurrency,
                    args.samples,
                    svc.pid,
                )
            )
        finally:
            svc.terminate()
            svc.wait(30)
        stats = fake.stats()
    result["phase"] = name
    result["llm_requests"] = stats["requests"]
    result["llm_faults"] = stats["faults"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--latency", type=float, default=0.05, help="fake LLM latency (s)")
    parser.add_argument("--fault-rate", type=float, default=0.1, help="LLM 5xx per attempt")
    parser.add_argument("--phases", default="clean,faults")
    parser.add_argument("--json", type=Path, default=None, help="keep every number here")
    args = parser.parse_args()
    info = {"machine": machine(), "versions": versions()}
    rows = []
    for name in args.phases.split(","):
        rows.append(phase(name.strip(), args))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(
            json.dumps({**info, "args": vars(args) | {"json": None}, "rows": rows}, indent=2) + "\n"
        )
    print(
        table(
            [
                "phase",
                "requests",
                "in flight",
                "LLM calls (5xx injected)",
                "wall s",
                "req/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "answers",
                "errors not the LLM's",
                "RSS MB after 200 / all",
            ],
            [
                [
                    r["phase"],
                    args.requests,
                    args.concurrency,
                    f"{r['llm_requests']} ({sum(r['llm_faults'].values())})",
                    r["wall_s"],
                    r["rps"],
                    r["p50_ms"],
                    r["p90_ms"],
                    r["p99_ms"],
                    ", ".join(f"{n} × {code}" for code, n in r["statuses"].items()),
                    r["not_llm_errors"],
                    " / ".join(str(v) for v in r["rss_mb"].values()),
                ]
                for r in rows
            ],
        )
    )
    for r in rows:
        for problem in r["problems"]:
            print(f"{r['phase']}: {problem}")
    clean = [r for r in rows if r["phase"] == "clean"]
    if any(r["not_llm_errors"] for r in rows) or any(r["statuses"].keys() - {200} for r in clean):
        sys.exit(1)


if __name__ == "__main__":
    main()
