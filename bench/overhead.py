"""Orchestration overhead: Refed's full graph against a fake server, beside a plain client.

    python -m bench.overhead                      # the full matrix, ~5 minutes on 2 cores
    python -m bench.overhead --samples 500 --latency 0.2 --concurrency 64   # one quick cell
    python -m bench.overhead --memory             # peak RSS at a small N and at 10,000 samples

For each latency x concurrency, in the same run and against a fresh fake server each:

- ``refed``: ``python -m graph.run`` (the CLI, in-process in a child: seeds file in,
  worker pool, LangGraph threads, the SQLite checkpointer, ledgers) over N references
  x K samples in reference mode;
- ``openai floor``: plain asyncio + ``openai.AsyncOpenAI`` + a semaphore making the same
  calls in the same dependency order (per reference: 2 analysis calls together, then 1
  distillation, then the synthesis calls together, then K chains respond -> refine ->
  judge), all references at once, bounded only by the semaphore;
- ``aiohttp floor``: the same with one ``aiohttp`` session and a JSON POST, the lowest
  cost a Python client can have here.

``--clients`` also takes Refed variants that swap one piece back, in the child only, to
measure each change: ``refed-before`` (ChatOpenAI transport + AsyncSqliteSaver, as before
issue 6), ``refed-langchain`` (ChatOpenAI transport only), ``refed-aiosqlite``
(AsyncSqliteSaver only), ``refed-fixed`` (``--fixed-concurrency``), ``refed-original``
(another checkout, ``--original-repo DIR``), and ``refed-pg1`` / ``refed-pg2``: one or
two ``graph.run`` workers on one run in a throwaway Postgres (``--store``), the
in-flight budget split between them.

Ideal wall time is ``max(calls x latency / concurrency, depth x latency)``: the server
can hold ``concurrency`` requests, each takes ``latency``, and no reference finishes
faster than its chain of ``depth`` = 6 dependent calls. At small N the second term can
dominate; the table says which one applied.

Client CPU is ``getrusage`` of the whole client process (imports and start-up
included, nothing subtracted) divided by the LLM calls the server counted; the
server's own CPU comes from its ``/stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import REPO, cpu_pressure, machine, run_child, rusage_self, table, versions
from testing.runs import write_seeds
from testing.servers import FakeServer

DEPTH = 6  # analysis -> distill -> synthesis -> respond -> refine -> judge
FEATURES = 6  # what the fake server's analysis yields: 3 subject areas + 3 skills


def synthesis_calls(per_reference: int, features: int = FEATURES, per_call: int = 10) -> int:
    """How many synthesis calls Refed makes for one reference (spread over features)."""
    shares = [
        per_reference // features + (1 if i < per_reference % features else 0)
        for i in range(features)
    ]
    return sum(math.ceil(s / per_call) for s in shares if s)


def calls_per_reference(per_reference: int) -> int:
    return 2 + 1 + synthesis_calls(per_reference) + 3 * per_reference


# ---------------------------------------------------------------------------- children


VARIANTS = {
    "refed": "HTTP transport, inline SQLite saver (the default)",
    "refed-langchain": "ChatOpenAI transport, inline SQLite saver",
    "refed-aiosqlite": "HTTP transport, AsyncSqliteSaver (aiosqlite)",
    "refed-before": "ChatOpenAI transport, AsyncSqliteSaver, with today's runner",
    "refed-original": "another checkout as it is (--original-repo), e.g. before issue 6",
    "refed-fixed": "the default with --fixed-concurrency (no adaptive limit per endpoint)",
    "refed-p1": "--processes 1: the graph in the run's own process (the default below 64 "
    "in flight)",
    "refed-p1-fixed": "--processes 1 --fixed-concurrency",
    "refed-p2": "--processes 2: two graph processes, the ledgers in the run's process (the "
    "default from 64 in flight on 2 cores)",
    "refed-p2-fixed": "--processes 2 --fixed-concurrency",
    "refed-pg1": "one graph.run worker on a Postgres run (--store), the whole in-flight budget",
    "refed-pg2": "two graph.run workers on one Postgres run, the in-flight budget split",
}
GRAPH_PROCESSES = {"refed-p1": 1, "refed-p1-fixed": 1, "refed-p2": 2, "refed-p2-fixed": 2}
"""Variants run with ``--processes`` set (graph/procpool.py)."""
PG_WORKERS = {"refed-pg1": 1, "refed-pg2": 2}
"""Variants run as several worker processes on one run kept in Postgres (graph/pgstore.py)."""


def _child_refed(args: argparse.Namespace) -> dict[str, Any]:
    import functools

    if args.repo:  # another checkout of Refed (e.g. the code before a change), as it is
        sys.path.insert(0, args.repo)
        from graph.run import main as original_main

        return _measure_cli(args, original_main)

    import graph.batch
    import graph.run
    import llm.balancer
    from graph.checkpoint import sqlite_saver
    from llm.transport import ChatModelTransport, openai_chat_model

    # The variants swap one piece each, in this child only (the local store and the
    # balancer look both up at call time); the runner, graph and nodes are the same code.
    if args.variant in ("refed-langchain", "refed-before"):

        def chat_openai(url: str, model: str, key: str, *, timeout: float) -> ChatModelTransport:
            return ChatModelTransport(openai_chat_model(url, model, key, timeout=timeout))

        setattr(llm.balancer, "HTTPTransport", chat_openai)  # noqa: B010
    if args.variant in ("refed-aiosqlite", "refed-before"):
        graph.batch.sqlite_saver = functools.partial(sqlite_saver, inline=False)
    return _measure_cli(args, graph.run.main)


def _measure_cli(args: argparse.Namespace, run_main: Any) -> dict[str, Any]:
    before = rusage_self()
    t0 = time.perf_counter()
    argv = [
        "--seeds",
        args.seeds,
        "--base-url",
        args.base_url,
        "--model",
        "fake",
        "--out",
        args.out,
        "--per-reference",
        str(args.per_reference),
        "--concurrency",
        str(args.concurrency),
        *json.loads(args.extra),
    ]
    code = run_main(argv)
    wall = time.perf_counter() - t0
    after = rusage_self()
    if code != 0:
        raise SystemExit(f"graph.run exited {code}")
    out = Path(args.out)
    db = sum(p.stat().st_size for p in out.glob("checkpoints*.sqlite*"))
    manifest = json.loads((out / "run.json").read_text())
    graph_processes = int(manifest.get("processes", 1))
    return {
        "wall": wall,
        # graph processes (--processes) count in: their CPU, and each at the largest's peak
        "cpu": after["cpu"] + after["children_cpu"],
        "startup_cpu": before["cpu"],
        "maxrss_mb": after["maxrss_mb"]
        + (after["children_maxrss_mb"] * graph_processes if graph_processes > 1 else 0),
        "db_bytes": db,
        "accepted": manifest["stats"]["accepted"],
        "processes": graph_processes,
        "calls_recorded": manifest["stats"]["usage"]["calls"],
    }


_STRUCT = {
    "type": "json_schema",
    "json_schema": {
        "name": "Out",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": {"type": "string", "maxLength": 120}},
                "note": {"type": "string", "maxLength": 300},
                "score": {"enum": [1, 2, 3, 4, 5]},
            },
            "required": ["items", "note", "score"],
            "additionalProperties": False,
        },
    },
}


def _child_floor(args: argparse.Namespace) -> dict[str, Any]:
    before = rusage_self()
    t0 = time.perf_counter()
    asyncio.run(_floor(args))
    wall = time.perf_counter() - t0
    after = rusage_self()
    return {
        "wall": wall,
        "cpu": after["cpu"],
        "startup_cpu": before["cpu"],
        "maxrss_mb": after["maxrss_mb"],
    }


async def _floor(args: argparse.Namespace) -> None:
    sem = asyncio.Semaphore(args.concurrency)
    ref_text = "reference " * 240  # about the size of a reference pair in a prompt

    if args.client == "openai":
        import openai

        oai = openai.AsyncOpenAI(base_url=args.base_url, api_key="x", max_retries=2, timeout=120)

        async def call(content: str, structured: bool) -> str:
            extra: dict[str, Any] = {"response_format": _STRUCT} if structured else {}
            async with sem:
                resp = await oai.chat.completions.create(
                    model="fake",
                    messages=[
                        {"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": content},
                    ],
                    max_tokens=512,
                    temperature=1.0,
                    seed=1,
                    **extra,
                )
            text = resp.choices[0].message.content or ""
            if structured:
                json.loads(text)
            return text

        closer: Any = oai.close
    else:
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
        )
        url = args.base_url.rstrip("/") + "/chat/completions"

        async def call(content: str, structured: bool) -> str:
            body: dict[str, Any] = {
                "model": "fake",
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": content},
                ],
                "max_tokens": 512,
                "temperature": 1.0,
                "seed": 1,
            }
            if structured:
                body["response_format"] = _STRUCT
            async with sem, session.post(url, json=body) as resp:
                data = await resp.json()
            text = str(data["choices"][0]["message"]["content"])
            if structured:
                json.loads(text)
            return text

        closer = session.close

    synth = synthesis_calls(args.per_reference)

    async def chain(i: int, k: int) -> None:
        first = await call(f"{ref_text} respond {i} {k}", False)
        better = await call(f"guidance refine {i} {k} {first}", False)
        await call(f"judge {i} {k} {better}", True)

    async def reference(i: int) -> None:
        await asyncio.gather(
            call(f"analyze instruction {i} {ref_text[:300]}", True),
            call(f"analyze response {i} {ref_text}", True),
        )
        await call(f"distill {i}", True)
        await asyncio.gather(*(call(f"synthesize {i} {s}", True) for s in range(synth)))
        await asyncio.gather(*(chain(i, k) for k in range(args.per_reference)))

    try:
        await asyncio.gather(*(reference(i) for i in range(args.refs)))
    finally:
        await closer()


def child_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["refed", "floor"])
    p.add_argument("--base-url", required=True)
    p.add_argument("--per-reference", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--seeds")
    p.add_argument("--out")
    p.add_argument("--refs", type=int)
    p.add_argument("--client", default="openai")
    p.add_argument("--variant", default="refed", choices=sorted(VARIANTS))
    p.add_argument("--repo", default=None, help="run graph.run from this checkout")
    p.add_argument("--extra", default="[]", help="JSON list of extra graph.run flags")
    args = p.parse_args(argv)
    result = _child_floor(args) if args.kind == "floor" else _child_refed(args)
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- parent


class _Postgres:
    """One throwaway cluster (testing/pgcluster.py) for the whole bench, started when needed."""

    cluster: Any = None

    @classmethod
    def database(cls) -> str:
        if cls.cluster is None:
            from testing.pgcluster import PgCluster, find_bin

            bin_dir = find_bin()
            if bin_dir is None:
                raise SystemExit("refed-pg*: initdb/pg_ctl not found (PATH, REFED_PG_BIN)")
            cls.cluster = PgCluster(bin_dir)
        return str(cls.cluster.create_database())

    @classmethod
    def stop(cls) -> None:
        if cls.cluster is not None:
            cls.cluster.stop()
            cls.cluster = None


@contextlib.contextmanager
def _pg_stopped() -> Iterator[None]:
    try:
        yield
    finally:
        _Postgres.stop()


def _run_workers(
    child_args: list[str], workers: int, concurrency: int, extra: list[str] | None
) -> dict[str, Any]:
    """``workers`` Refed children on one Postgres run, ``concurrency`` split between them.

    Each child measures itself as the single-process row does (wall from ``main`` to its
    return, CPU and peak RSS of its process); the row takes the longest wall and the sums
    of CPU and RSS. Postgres's own CPU is not counted (it is the server side of the store).
    """
    store = _Postgres.database()
    args = list(child_args)
    args[args.index("--concurrency") + 1] = str(math.ceil(concurrency / workers))
    flags = [*(extra or []), "--store", store]
    if "--extra" in args:
        i = args.index("--extra")
        flags = [*json.loads(args[i + 1]), "--store", store]
        del args[i : i + 2]
    args += ["--extra", json.dumps(flags), "--variant", "refed"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.overhead", "_child", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for _ in range(workers)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=1800)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"worker failed ({proc.returncode}):\n{err[-3000:]}")
        results.append(json.loads(lines[-1]))
    return {
        "wall": max(r["wall"] for r in results),
        "cpu": sum(r["cpu"] for r in results),
        "startup_cpu": sum(r["startup_cpu"] for r in results),
        "maxrss_mb": sum(r["maxrss_mb"] for r in results),
        "db_bytes": 0,
        "accepted": max(r["accepted"] for r in results),
        "calls_recorded": max(r["calls_recorded"] for r in results),  # the run's, in each
        "workers": results,
    }


def measure(
    kind: str,
    latency: float,
    concurrency: int,
    refs: int,
    per_reference: int,
    work: Path,
    extra: list[str] | None = None,
    original_repo: str | None = None,
) -> dict[str, Any]:
    """One client against a fresh fake server; the row for the table."""
    pressure = cpu_pressure()
    with FakeServer(latency) as server:
        args = [
            "--base-url",
            server.base_url,
            "--per-reference",
            str(per_reference),
            "--concurrency",
            str(concurrency),
        ]
        if kind.startswith("refed"):
            seeds = write_seeds(work / f"seeds-{refs}.jsonl", refs)
            out = work / f"run-{latency}-{concurrency}-{refs}-{time.monotonic_ns()}"
            args = ["refed", *args, "--seeds", str(seeds), "--out", str(out), "--variant", kind]
            flags = [
                *(extra or []),
                *(["--fixed-concurrency"] if kind.endswith("-fixed") else []),
                *(["--processes", str(GRAPH_PROCESSES[kind])] if kind in GRAPH_PROCESSES else []),
            ]
            if flags:
                args += ["--extra", json.dumps(flags)]
            if kind == "refed-original":
                if not original_repo:
                    raise SystemExit("refed-original needs --original-repo")
                args += ["--repo", original_repo]
        else:
            args = ["floor", *args, "--refs", str(refs), "--client", kind]
        if kind in PG_WORKERS:
            res = _run_workers(args, PG_WORKERS[kind], concurrency, extra)
        else:
            res = run_child("bench.overhead", args)
        stats = server.stats()
    calls = int(stats["requests"])
    samples = refs * per_reference
    ideal_thr = calls * latency / concurrency
    ideal_chain = DEPTH * latency
    ideal = max(ideal_thr, ideal_chain)
    label = kind if kind.startswith("refed") else f"{kind} floor"
    if kind == "refed" and res.get("processes", 1) > 1:
        label = f"refed (default: {res['processes']} processes)"
    row = {
        "client": label,
        "latency_ms": round(latency * 1000),
        "concurrency": concurrency,
        "refs": refs,
        "samples": samples,
        "calls": calls,
        "wall_s": res["wall"],
        "ideal_s": ideal,
        "ideal_by": "throughput" if ideal_thr >= ideal_chain else "chain depth",
        "x_ideal": res["wall"] / ideal,
        "cpu_ms_per_call": 1000 * res["cpu"] / calls,
        "startup_cpu_s": res["startup_cpu"],
        "server_cpu_ms_per_call": 1000 * float(stats["cpu_seconds"]) / calls,
        "server_max_in_flight": stats["max_in_flight"],
        "peak_rss_mb": res["maxrss_mb"],
        "cpu_pressure_before": pressure,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if kind in PG_WORKERS:
        row["workers"] = [
            {k: w[k] for k in ("wall", "cpu", "maxrss_mb", "calls_recorded")}
            for w in res["workers"]
        ]
    if kind.startswith("refed") and kind not in PG_WORKERS:
        row["ckpt_kb_per_sample"] = res["db_bytes"] / 1024 / samples
    if kind.startswith("refed"):
        row["accepted"] = res["accepted"]
        if res["calls_recorded"] != calls:
            row["note"] = f"run.json counts {res['calls_recorded']} calls"
    return row


HEADERS = [
    "latency",
    "in flight",
    "client",
    "LLM calls",
    "wall s",
    "ideal s",
    "wall / ideal",
    "client CPU ms/call",
    "server CPU ms/call",
    "server peak in flight",
    "peak RSS MB",
    "ckpt KB/sample",
]


def format_rows(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        ideal = f"{r['ideal_s']:.2f}" + (" (chain)" if r["ideal_by"] == "chain depth" else "")
        out.append(
            [
                f"{r['latency_ms']} ms",
                r["concurrency"],
                r["client"],
                r["calls"],
                f"{r['wall_s']:.2f}",
                ideal,
                f"**{r['x_ideal']:.2f}x**" if r["client"] == "refed" else f"{r['x_ideal']:.2f}x",
                f"{r['cpu_ms_per_call']:.2f}",
                f"{r['server_cpu_ms_per_call']:.2f}",
                r["server_max_in_flight"],
                f"{r['peak_rss_mb']:.0f}",
                f"{r['ckpt_kb_per_sample']:.1f}" if "ckpt_kb_per_sample" in r else "-",
            ]
        )
    return table(HEADERS, out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        child_main(argv[1:])
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    p.add_argument("--samples", type=int, default=2000, help="N x K samples per cell")
    p.add_argument("--per-reference", type=int, default=4, help="K samples per reference")
    p.add_argument("--latency", type=float, nargs="+", default=[0.2, 0.02])
    p.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    p.add_argument(
        "--clients",
        nargs="+",
        default=["refed", "openai", "aiohttp"],
        choices=[*VARIANTS, "openai", "aiohttp"],
    )
    p.add_argument(
        "--original-repo",
        default=None,
        help="a checkout to run as refed-original (git archive <commit> | tar -x -C DIR)",
    )
    p.add_argument("--memory", action="store_true", help="the memory-flatness check instead")
    p.add_argument("--memory-samples", type=int, nargs="+", default=[400, 10000])
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("extra", nargs="*", help="extra graph.run flags for refed (after --)")
    args = p.parse_args(argv)
    info = {"machine": machine(), "versions": versions()}
    print(json.dumps(info), file=sys.stderr)
    rows: list[dict[str, Any]] = []
    k = args.per_reference
    with tempfile.TemporaryDirectory(prefix="refed-bench-") as tmp, _pg_stopped():
        work = Path(tmp)
        if args.memory:
            for samples in args.memory_samples:
                refs = max(1, samples // k)
                row = measure("refed", 0.02, 64, refs, k, work, args.extra)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        else:
            refs = max(1, args.samples // k)
            for latency in args.latency:
                for conc in args.concurrency:
                    for client in args.clients:
                        row = measure(
                            client, latency, conc, refs, k, work, args.extra, args.original_repo
                        )
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
    if args.memory:
        print(
            table(
                ["samples", "references", "LLM calls", "wall s", "peak RSS MB", "ckpt KB/sample"],
                [
                    [
                        r["samples"],
                        r["refs"],
                        r["calls"],
                        f"{r['wall_s']:.1f}",
                        f"{r['peak_rss_mb']:.0f}",
                        f"{r['ckpt_kb_per_sample']:.1f}",
                    ]
                    for r in rows
                ],
            )
        )
    else:
        print(format_rows(rows))
    if args.json:
        args.json.write_text(json.dumps({**info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
