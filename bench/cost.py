"""Cost per accepted sample by feedback mode, for K samples per reference.

    python -m bench.cost                          # fake server, 3 modes x K in 1 2 5 10 20
    python -m bench.cost --base-url http://127.0.0.1:8391/v1 --model smollm2 \\
        --references 2 --k 1 4                    # a small run on a real server

Every run is ``python -m graph.run`` on the same seed references (a fresh run folder
each), and the numbers are the run's own counters in ``run.json``: LLM calls, feedback
calls, prompt and completion tokens, divided by accepted samples. The fake server's
"tokens" are characters / 4 of what was sent and returned: they compare prompt sizes
across modes, not a tokenizer's counts; its judge passes every sample, so per accepted
is per sample there.

The method's claim checked here: feedback is collected once per reference (2 analysis
calls + 1 distillation), so feedback calls per sample are 3/K in ``reference`` mode,
against 1 per sample in ``sample`` mode and 0 in ``none`` mode.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import machine, table, versions
from testing.runs import write_seeds
from testing.servers import FakeServer

MODES = ("reference", "sample", "none")


def run_once(
    base_url: str, model: str, seeds: Path, out: Path, mode: str, k: int, extra: list[str]
) -> dict[str, Any]:
    from graph.run import main as run_main

    argv = [
        "--seeds",
        str(seeds),
        "--base-url",
        base_url,
        "--model",
        model,
        "--out",
        str(out),
        "--feedback-mode",
        mode,
        "--per-reference",
        str(k),
        "--log-level",
        "warning",
        *extra,
    ]
    with contextlib.redirect_stdout(sys.stderr):
        code = run_main(argv)
    if code != 0:
        raise SystemExit(f"graph.run exited {code} for mode={mode} K={k}")
    stats = json.loads((out / "run.json").read_text())["stats"]
    usage = stats["usage"]
    accepted = stats["accepted"] or 0
    per = (lambda x: x / accepted) if accepted else (lambda x: float("nan"))
    return {
        "mode": mode,
        "k": k,
        "accepted": accepted,
        "rejected": stats["rejected"],
        "calls": usage["calls"],
        "feedback_calls": usage["feedback_calls"],
        "calls_per_sample": per(usage["calls"]),
        "feedback_per_sample": per(usage["feedback_calls"]),
        "prompt_tokens_per_sample": per(usage["prompt_tokens"]),
        "completion_tokens_per_sample": per(usage["completion_tokens"]),
        "expected_feedback_per_sample": {"reference": 3 / k, "sample": 1.0, "none": 0.0}[mode],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__)
    p.add_argument("--references", type=int, default=20, help="seed references (same for all)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--base-url", default=None, help="a real server (default: the fake one)")
    p.add_argument("--model", default="fake")
    p.add_argument("--seeds", type=Path, default=None, help="seed file (default: generated)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("extra", nargs="*", help="extra graph.run flags (after --)")
    args = p.parse_args(argv)
    info = {"machine": machine(), "versions": versions()}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="refed-cost-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        base_url = args.base_url
        if base_url is None:
            base_url = stack.enter_context(FakeServer(0.0)).base_url
        seeds = args.seeds or write_seeds(work / "seeds.jsonl", args.references)
        extra = list(args.extra)
        if args.seeds:
            extra += ["--limit", str(args.references)]
        for k in args.k:
            for mode in args.modes:
                row = run_once(base_url, args.model, seeds, work / f"{mode}-{k}", mode, k, extra)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(
        table(
            [
                "K",
                "mode",
                "accepted",
                "LLM calls / sample",
                "feedback calls / sample",
                "expected",
                "prompt tok / sample",
                "completion tok / sample",
            ],
            [
                [
                    r["k"],
                    r["mode"],
                    r["accepted"],
                    f"{r['calls_per_sample']:.2f}",
                    f"{r['feedback_per_sample']:.3f}",
                    f"{r['expected_feedback_per_sample']:.3f}",
                    f"{r['prompt_tokens_per_sample']:.0f}",
                    f"{r['completion_tokens_per_sample']:.0f}",
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
