"""The embedded server's speed by how its cores are shared, and by the token sampler.

    python -m bench.embedded_cores --demo --out bench/results/embedded_cores.json

For each thread setting the embedded vLLM server is started alone:

- ``vllm``: vLLM's CPU default, one core kept for its API server and the model computed on
  the rest (on 2 cores: one thread);
- ``refed``: what :func:`embedded.server.thread_env` sets (on 2 cores or fewer the engine
  computes on all of them).

Against each server: ``--in-flight`` requests at once, each held to ``--tokens`` generated
tokens (``ignore_eos``), with the ``smollm2`` profile's sampling (temperature 0.3,
repetition penalty 1.15, a seed per request) and either ``top_p 0.9`` or ``min_p 0.05``
as the tail cut; the rate is generated tokens over the batch's wall time. With
``--demo``, the demo itself (``python -m graph.run`` on ``examples/seeds.jsonl``, 2 per
reference, the ``smollm2`` profile) runs against the server and its wall time from
process start to exit is reported with its accepted count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, decode_rate, machine, versions
from embedded.server import EmbeddedServer, usable_cores

SAMPLERS: dict[str, dict[str, float]] = {"top_p 0.9": {"top_p": 0.9}, "min_p 0.05": {"min_p": 0.05}}
SEEDS = REPO / "examples" / "seeds.jsonl"


def _requests() -> list[str]:
    with SEEDS.open(encoding="utf-8") as handle:
        return [json.loads(line)["instruction"] for line in handle if line.strip()]


def _bodies(model: str, n: int, tokens: int, sampler: dict[str, float]) -> list[dict[str, Any]]:
    asks = _requests()
    return [
        {
            "model": model,
            "messages": [{"role": "user", "content": asks[i % len(asks)]}],
            "max_tokens": tokens,
            "temperature": 0.3,
            "repetition_penalty": 1.15,
            "seed": i,
            "ignore_eos": True,
            **sampler,
        }
        for i in range(n)
    ]


def _demo(base_url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="refed-bench-") as tmp:
        cmd = [
            sys.executable, "-m", "graph.run", "--seeds", str(SEEDS), "--out", f"{tmp}/run",
            "--per-reference", "2", "--profile", "smollm2", "--base-url", base_url,
            "--model", "smollm2",
        ]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
    found = re.search(r"accepted: (\d+)\s+rejected/failed: (\d+)", done.stdout + done.stderr)
    return {
        "seconds": seconds,
        "exit": done.returncode,
        "accepted": int(found.group(1)) if found else None,
        "rejected": int(found.group(2)) if found else None,
    }


def measure(threads: str, n: int, tokens: int, demo: bool) -> dict[str, Any]:
    server = EmbeddedServer(vllm_threads=threads == "vllm")
    with server:
        rates = {
            name: asyncio.run(
                decode_rate(server.base_url, _bodies(server.model, n, tokens, sampler))
            )
            for name, sampler in SAMPLERS.items()
        }
        return {
            "threads": threads,
            "batch": rates,
            "demo": _demo(server.base_url) if demo else None,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.embedded_cores", description=__doc__)
    parser.add_argument("--in-flight", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--demo", action="store_true", help="also time the demo per setting")
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "embedded_cores.json"
    )
    args = parser.parse_args(argv)
    runs = [measure(t, args.in_flight, args.tokens, args.demo) for t in ("vllm", "refed")]
    result = {
        "cores": usable_cores(),
        "in_flight": args.in_flight,
        "tokens_per_request": args.tokens,
        "runs": runs,
        "machine": machine(),
        "versions": versions(),
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(
        f"| threads ({usable_cores()} cores) | "
        + " | ".join(f"{name}: tok/s at {args.in_flight} in flight" for name in SAMPLERS)
        + " | demo (6 x 2) |"
    )
    print("|---" * (len(SAMPLERS) + 2) + "|")
    for run in runs:
        cells = [f"{run['batch'][name]['tokens_per_s']:.1f}" for name in SAMPLERS]
        demo = run["demo"]
        shown = f"{demo['seconds']:.0f} s, {demo['accepted']} accepted" if demo is not None else "–"
        print(f"| {run['threads']} | " + " | ".join(cells) + f" | {shown} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
