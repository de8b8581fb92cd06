"""Scale-out: throughput of ``python -m graph.run`` with more endpoints and more workers.

Each endpoint is a fake server (``testing.fake_server``) that processes at most
``--capacity`` requests at once and holds each ``--latency`` seconds, so one endpoint
can do ``capacity / latency`` calls a second and no more: the most a client can get out
of N of them is N times that ("ideal"). The client's ``--concurrency`` is a cap well
above the capacity, so the per-endpoint adaptive limit has to find the level itself.

Workers (``--workers 1,2,4``) are several ``graph.run`` processes on one run kept in
Postgres (``--store``): give a DSN with ``--store DSN``, or ``--pg`` to start a throwaway
cluster (``testing/pgcluster.py``; needs initdb/pg_ctl and ``pip install -e '.[postgres]'``).
A fresh database is used per row.

    python -m bench.scale --endpoints 1,2
    python -m bench.scale --endpoints 2 --workers 1,2,4 --pg --capacity 0 --latency 0.02

Wall time includes each process's start-up (about 1.5 s of imports); rows run long
enough for that to be small next to the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import REPO, machine, table, versions
from testing.runs import write_seeds
from testing.servers import FakeServer


@contextlib.contextmanager
def fake_endpoints(n: int, latency: float, capacity: int) -> Iterator[list[FakeServer]]:
    extra = ["--capacity", str(capacity)] if capacity > 0 else []
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(FakeServer(latency, extra_args=extra)) for _ in range(n)]


@contextlib.contextmanager
def postgres(dsn: str | None, start: bool) -> Iterator[Any]:
    """Yields a function giving a fresh database DSN per row (or None without Postgres)."""
    if dsn is not None:
        import uuid

        import psycopg

        def fresh() -> str:
            name = "scale_" + uuid.uuid4().hex[:10]
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            return dsn.rsplit("/", 1)[0] + "/" + name

        yield fresh
        return
    if not start:
        yield None
        return
    sys.path.insert(0, str(REPO))
    from testing.pgcluster import PgCluster, find_bin

    bin_dir = find_bin()
    if bin_dir is None:
        raise SystemExit("--pg: initdb/pg_ctl not found (PATH, REFED_PG_BIN)")
    cluster = PgCluster(bin_dir)
    try:
        yield cluster.create_database
    finally:
        cluster.stop()


def run_row(
    work: Path,
    seeds: Path,
    endpoints: list[FakeServer],
    workers: int,
    args: argparse.Namespace,
    store: str | None,
) -> dict[str, Any]:
    out = work / f"e{len(endpoints)}-w{workers}"
    cmd = [sys.executable, "-m", "graph.run", "--seeds", str(seeds), "--out", str(out)]
    for server in endpoints:
        cmd += ["--base-url", server.base_url]
    cmd += [
        "--model",
        "fake",
        "--per-reference",
        str(args.per_reference),
        "--concurrency",
        str(args.concurrency),
    ]
    if store is not None:
        cmd += ["--store", store]
    if args.fixed:
        cmd += ["--fixed-concurrency"]
    before_requests = sum(s.stats()["requests"] for s in endpoints)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    logs = [work / f"e{len(endpoints)}-w{workers}-{i}.stderr" for i in range(workers)]
    procs = []
    for log_path in logs:
        with log_path.open("w") as err_file:
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=err_file,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            )
    # The servers' request counts over time, to tell the steady rate from start-up and tail.
    trace: list[tuple[float, int]] = []
    while any(proc.poll() is None for proc in procs):
        total = sum(s.stats()["requests"] for s in endpoints) - before_requests
        trace.append((time.monotonic() - started, total))
        time.sleep(0.5)
    wall = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for proc, log_path in zip(procs, logs, strict=True):
        if proc.returncode != 0:
            err = log_path.read_text()
            raise RuntimeError(f"graph.run failed ({proc.returncode}):\n{err[-3000:]}")
    stats = json.loads((out / "run.json").read_text())["stats"]
    calls = sum(s.stats()["requests"] for s in endpoints) - before_requests
    per_endpoint = [s.stats()["requests"] for s in endpoints]
    limits = _final_limits(out / "log.jsonl")
    trace.append((wall, calls))
    first = next(t for t, n in trace if n > 0)
    t10 = next(t for t, n in trace if n >= 0.1 * calls)
    t90 = next(t for t, n in trace if n >= 0.9 * calls)
    ideal = len(endpoints) * args.capacity / args.latency if args.capacity > 0 else None
    return {
        "endpoints": len(endpoints),
        "workers": workers,
        "wall_s": wall,
        "calls": calls,
        "calls_per_s": calls / wall,
        "steady_calls_per_s": 0.8 * calls / (t90 - t10) if t90 > t10 else None,
        "first_call_s": first,
        "last_10pct_s": wall - t90,
        "ideal_calls_per_s": ideal,
        "samples": (stats["accepted"] or 0) + (stats["rejected"] or 0),
        "samples_per_s": ((stats["accepted"] or 0) + (stats["rejected"] or 0)) / wall,
        "client_cpu_s": (cpu_after.ru_utime + cpu_after.ru_stime)
        - (cpu_before.ru_utime + cpu_before.ru_stime),
        "calls_per_endpoint": per_endpoint,
        "final_limits": limits,
    }


def _final_limits(log: Path) -> list[float]:
    """The adaptive limits each worker's balancer ended with (its last endpoint_stats line)."""
    limits: list[float] = []
    if not log.exists():
        return limits
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if rec.get("event") == "endpoint_stats":
                limits += [float(e["limit"]) for e in rec["endpoints"]]
    return limits


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    p.add_argument("--endpoints", type=_ints, default=[1, 2], help="e.g. 1,2,4")
    p.add_argument("--workers", type=_ints, default=[1], help="graph.run processes, e.g. 1,2,4")
    p.add_argument("--capacity", type=int, default=8, help="per endpoint; 0: unlimited")
    p.add_argument("--latency", type=float, default=0.25, help="seconds per request")
    p.add_argument("--references", type=int, default=60)
    p.add_argument("--per-reference", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=32, help="per-endpoint cap (graph.run)")
    p.add_argument(
        "--fixed", action="store_true", help="--fixed-concurrency: no adaptive limit (control)"
    )
    p.add_argument("--store", default=None, help="Postgres DSN for several workers")
    p.add_argument("--pg", action="store_true", help="start a throwaway Postgres cluster")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if max(args.workers) > 1 and args.store is None and not args.pg:
        raise SystemExit("several workers share a run through Postgres: give --store DSN or --pg")
    info = {"machine": machine(), "versions": versions(), "args": vars(args) | {"json": None}}
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="refed-scale-") as tmp,
        postgres(args.store, args.pg) as fresh_db,
    ):
        work = Path(tmp)
        seeds = write_seeds(work / "seeds.jsonl", args.references)
        for n in args.endpoints:
            for w in args.workers:
                store = fresh_db() if fresh_db is not None else None  # every row, if any
                with fake_endpoints(n, args.latency, args.capacity) as servers:
                    row = run_row(work, seeds, servers, w, args, store)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    first = rows[0]["calls_per_s"]
    print(
        table(
            [
                "endpoints",
                "workers",
                "wall s",
                "first call s",
                "last 10% s",
                "LLM calls",
                "calls/s",
                "steady calls/s",
                "ideal calls/s",
                "speed-up",
                "samples/s",
                "client CPU s",
                "calls per endpoint",
                "final limits",
            ],
            [
                [
                    r["endpoints"],
                    r["workers"],
                    f"{r['wall_s']:.1f}",
                    f"{r['first_call_s']:.1f}",
                    f"{r['last_10pct_s']:.1f}",
                    r["calls"],
                    f"{r['calls_per_s']:.1f}",
                    f"{r['steady_calls_per_s']:.1f}",
                    "-" if r["ideal_calls_per_s"] is None else f"{r['ideal_calls_per_s']:.0f}",
                    f"{r['calls_per_s'] / first:.2f}x",
                    f"{r['samples_per_s']:.2f}",
                    f"{r['client_cpu_s']:.1f}",
                    " / ".join(str(c) for c in r["calls_per_endpoint"]),
                    " / ".join(f"{x:g}" for x in r["final_limits"]),
                ]
                for r in rows
            ],
        )
    )
    if args.json:
        args.json.write_text(json.dumps({**info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
