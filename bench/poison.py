"""Poison requests and the pre-flight check: what a run does when the server is healthy
but some requests always fail, or when the endpoint is wrong.

**Poison.** The same ``python -m graph.run`` (``--references`` x ``--per-reference``
candidates, default 50 x 4 = 200) against the fake server at ``--latency`` (200 ms),
first fault-free, then with ``--poison-rate`` (20 %) of the distinct requests failing
every time they are sent (HTTP 500, keyed on the body hash: ``testing.fake_server``).
Each run starts with a fresh run folder; ``--repeats`` alternates the two. It checks
and reports:

- wall time of the poisoned run against the fault-free one (target: at most 1.5x);
- every candidate not failed is judged, every failed one names a poisoned request
  (its status and the server's message in the reason); a reference stopped early by a
  poisoned reference-level call says so;
- every poisoned request was sent twice (the same answer again, while the server answers
  other requests, ends it), at most 1 + ``--max-retries`` times;
- the endpoint is never ejected (no ``endpoint_ejected`` in the run's log).

**Pre-flight.** Seconds from start to exit of ``graph.run`` against nothing listening,
against a port whose connections never open, and against a server whose
``/v1/models`` takes 6 s (it must be let through).

    python -m bench.poison                      # ~3 min
    python -m bench.poison --references 10 --repeats 1

Wall times include the interpreter's start (about 2 s here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, machine, table, versions
from dataset.ledger import Ledger
from state.records import ReferenceDone, Sample
from testing.runs import write_seeds
from testing.servers import FakeServer, blackhole, free_port


def graph_run(args: list[str]) -> tuple[int, float, str]:
    """Exit status, wall seconds and stderr of one ``python -m graph.run``."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "graph.run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return proc.returncode, time.monotonic() - started, proc.stderr


def _read(path: Path) -> list[Sample]:
    return list(Ledger(path).read(Sample)) if path.exists() else []


def one_run(
    work: Path, seeds: Path, run_args: list[str], latency: float, poison: float, seed: int
) -> dict[str, Any]:
    out = work / f"run-{'poison' if poison else 'clean'}-{time.monotonic_ns()}"
    with FakeServer(latency, poison_rate=poison or None, poison_seed=seed) as server:
        code, wall, stderr = graph_run(
            [
                *("--seeds", str(seeds), "--base-url", server.base_url, "--model", "fake"),
                *("--out", str(out), *run_args),
            ]
        )
        stats = server.stats()
    if code != 0:
        raise SystemExit(f"graph.run exited {code}:\n{stderr[-3000:]}")
    samples = _read(out / "samples.jsonl") + _read(out / "rejected.jsonl")
    failed = [s for s in samples if s.status == "failed"]
    judged = [s for s in samples if s.judgement is not None]
    sent: dict[str, int] = stats["poisoned"]["sent"]
    named = {
        (s.reason or "").split("poisoned request ")[1].split(":")[0]
        for s in failed
        if "poisoned request " in (s.reason or "")
    }
    done = list(Ledger(out / "references.jsonl").read(ReferenceDone))
    stopped = [d for d in done if d.error]
    log_text = (out / "log.jsonl").read_text()
    ejections = log_text.count('"endpoint_ejected"')
    checks = {
        "every candidate judged or failed": len(judged) + len(failed) == len(samples),
        "every failure names a poisoned request, with status and message": all(
            "HTTP 500: poisoned request " in (s.reason or "") for s in failed
        )
        and named <= set(sent),
        "every early-stopped reference names a poisoned request": all(
            "poisoned request" in (d.error or "") for d in stopped
        ),
        "each poisoned request sent at least twice, at most 1 + retries times": all(
            2 <= n <= sent_times(run_args) for n in sent.values()
        ),
        "endpoint never ejected": ejections == 0,
    }
    return {
        "poison_rate": poison,
        "wall_s": round(wall, 2),
        "references_done": len(done),
        "references_stopped_early": len(stopped),
        "candidates": len(samples),
        "judged": len(judged),
        "failed": len(failed),
        "accepted": sum(s.status == "accepted" for s in samples),
        "llm_requests": stats["requests"],
        "poisoned_distinct": stats["poisoned"]["distinct"],
        "poisoned_sent": stats["poisoned"]["requests"],
        "poisoned_most_sends": max(sent.values(), default=0),
        "ejections": ejections,
        "checks": checks,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def sends(row: dict[str, Any]) -> str:
    """How many poisoned requests, and how often each was sent (mean, most)."""
    n = row["poisoned_distinct"]
    if not n:
        return "0"
    return f"{n} × {row['poisoned_sent'] / n:.2f} (most {row['poisoned_most_sends']})"


def sent_times(run_args: list[str]) -> int:
    retries = (
        int(run_args[run_args.index("--max-retries") + 1]) if "--max-retries" in run_args else 4
    )
    return 1 + retries


def preflight_rows(work: Path, seeds: Path) -> list[dict[str, Any]]:
    rows = []
    base = ["--seeds", str(seeds), "--model", "fake", "--per-reference", "1"]
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    code, wall, err = graph_run([*base, "--base-url", nowhere, "--out", str(work / "pf1")])
    rows.append({"case": "nothing listening", "exit": code, "wall_s": round(wall, 2), "err": err})
    with blackhole() as url:
        code, wall, err = graph_run([*base, "--base-url", url, "--out", str(work / "pf2")])
    rows.append(
        {"case": "connection never opens", "exit": code, "wall_s": round(wall, 2), "err": err}
    )
    with FakeServer(0.0, extra_args=["--models-delay", "6"]) as slow:
        code, wall, err = graph_run(
            [*base, "--base-url", slow.base_url, "--out", str(work / "pf3"), "--limit", "1"]
        )
    rows.append(
        {"case": "/v1/models answers after 6 s", "exit": code, "wall_s": round(wall, 2), "err": err}
    )
    for row in rows:
        row["message"] = next(
            (ln for ln in str(row.pop("err")).splitlines() if ln.startswith("error:")), ""
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=int, default=50)
    parser.add_argument("--per-reference", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--poison-rate", type=float, default=0.2)
    parser.add_argument("--poison-seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "poison.json")
    parser.add_argument("--no-preflight", action="store_true")
    args, run_args = parser.parse_known_args()  # anything else goes to graph.run
    run_args = ["--per-reference", str(args.per_reference), *run_args]
    info = {"machine": machine(), "versions": versions(), "args": vars(args) | {"json": None}}
    work = Path(tempfile.mkdtemp(prefix="refed-poison-"))
    seeds = write_seeds(work / "seeds.jsonl", args.references)
    rows: list[dict[str, Any]] = []
    for _ in range(args.repeats):
        for rate in (0.0, args.poison_rate):
            row = one_run(work, seeds, run_args, args.latency, rate, args.poison_seed)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    clean = statistics.median(r["wall_s"] for r in rows if not r["poison_rate"])
    poisoned = statistics.median(r["wall_s"] for r in rows if r["poison_rate"])
    ratio = poisoned / clean
    pre = [] if args.no_preflight else preflight_rows(work, seeds)
    result = {**info, "runs": rows, "ratio": round(ratio, 2), "preflight": pre}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(
        table(
            [
                "poison",
                "wall s",
                "references (stopped early)",
                "candidates",
                "judged",
                "failed (poison named)",
                "LLM requests",
                "poisoned requests × sends",
                "ejections",
            ],
            [
                [
                    f"{100 * r['poison_rate']:.0f}%",
                    r["wall_s"],
                    f"{r['references_done']} ({r['references_stopped_early']})",
                    r["candidates"],
                    r["judged"],
                    r["failed"],
                    r["llm_requests"],
                    sends(r),
                    r["ejections"],
                ]
                for r in rows
            ],
        )
    )
    print(f"\nmedian wall: fault-free {clean:.1f} s, poisoned {poisoned:.1f} s: {ratio:.2f}x")
    failed_checks = sorted({k for r in rows for k, ok in r["checks"].items() if not ok})
    print(
        "checks: " + ("all passed" if not failed_checks else "FAILED " + "; ".join(failed_checks))
    )
    if pre:
        print()
        print(
            table(
                ["pre-flight case", "exit", "wall s", "message"],
                [[r["case"], r["exit"], r["wall_s"], r["message"] or "–"] for r in pre],
            )
        )
    if failed_checks or ratio > 1.5:
        sys.exit(1)


if __name__ == "__main__":
    main()
