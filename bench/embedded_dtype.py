"""The embedded server's decoding speed in bfloat16 and float32 on this CPU.

Starts the embedded vLLM server once per dtype (nothing else of Refed runs), sends N
requests at once that must each write ``--tokens`` tokens (``ignore_eos``), and reports
generated tokens per second over the whole batch. On a CPU without native bfloat16
(no AVX-512 BF16 or AMX) vLLM emulates it; ``embedded.server.compute_dtype`` picks
float32 there.

    python -m bench.embedded_dtype --out bench/results/embedded_dtype.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from bench.common import REPO, decode_rate, machine, versions
from embedded.server import EmbeddedServer, compute_dtype


def _bodies(model: str, n: int, tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "messages": [{"role": "user", "content": f"Tell a long story, number {i}."}],
            "max_tokens": tokens,
            "temperature": 0.8,
            "ignore_eos": True,
        }
        for i in range(n)
    ]


def measure(dtype: str, in_flight: list[int], tokens: int) -> dict[str, Any]:
    server = EmbeddedServer(extra_args=["--dtype", dtype])  # the last --dtype wins
    with server:
        rows = {
            str(n): asyncio.run(decode_rate(server.base_url, _bodies(server.model, n, tokens)))
            for n in in_flight
        }
    return {"dtype": dtype, "in_flight": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.embedded_dtype", description=__doc__)
    parser.add_argument("--in-flight", default="1,8,16", help="comma-separated batch sizes")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "embedded_dtype.json"
    )
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.in_flight.split(",")]
    result = {
        "chosen_here": compute_dtype(),
        "runs": [measure(d, sizes, args.tokens) for d in ("bfloat16", "float32")],
        "tokens_per_request": args.tokens,
        "machine": machine(),
        "versions": versions(),
    }
    args.out.write_text(json.dumps(result, indent=1))
    for run in result["runs"]:
        cells = ", ".join(
            f"{n} in flight {r['tokens_per_s']:.1f} tok/s" for n, r in run["in_flight"].items()
        )
        print(f"{run['dtype']}: {cells}")
    print(f"compute_dtype() here: {result['chosen_here']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
