"""Server saturation: Refed's output tokens/s against the server's own, on the same requests.

    python -m bench.saturation --base-url http://127.0.0.1:8391/v1 --model smollm2

1. Refed: ``python -m graph.run`` (in this process) over a few seed references, with
   the default HTTP transport wrapped to record every request it sends (body, start,
   end, tokens). Its rate is the completion tokens of all its requests divided by the
   span from its first request to its last answer.
2. Replay: the same request bodies sent straight at the server with plain aiohttp and
   the same number in flight, all at once (no dependencies between them). Its rate is
   measured the same way.

The ratio Refed / replay says how much of the server's throughput the pipeline gets
at that concurrency (target >= 0.9); the replay has no chain dependencies, so it is
an upper bound Refed can only approach. The replay runs second, on a prefix cache
Refed has warmed, which favours the replay; ``--cold`` empties the cache before each of
the two (else Refed's own run can find a cache an earlier run of the same prompts left).

The prefix-cache hit rate is the change of vLLM's ``prefix_cache_hits`` over
``prefix_cache_queries`` counters (``/metrics``) during Refed's run. Those counters are
server-wide: the table also gives the share of the window's prompt tokens that were
Refed's, so a shared server's other traffic is visible. Keep runs short on a shared
machine: the defaults take a few minutes on a 2-core CPU server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO, machine, table, versions
from llm.transport import Completion, HTTPTransport, Messages, _request_body

RECORDS: list[dict[str, Any]] = []


class RecordingTransport(HTTPTransport):
    """The default transport, recording each request's body, timing and tokens."""

    async def complete(self, messages: Messages, params: dict[str, Any]) -> Completion:
        start = time.monotonic()
        done = await super().complete(messages, params)
        RECORDS.append(
            {
                "body": _request_body(self.model, messages, params),
                "start": start,
                "end": time.monotonic(),
                "prompt_tokens": done.prompt_tokens,
                "completion_tokens": done.completion_tokens,
            }
        )
        return done


def occupancy(records: list[dict[str, Any]], concurrency: int) -> tuple[float, float, int]:
    """Time-weighted mean requests in flight over the span, the share of the span with
    fewer than ``concurrency`` in flight (what the graph's dependencies and the adaptive
    limit allowed), and the most in flight at once."""
    events = sorted(
        [(r["start"], 1) for r in records] + [(r["end"], -1) for r in records],
        key=lambda e: (e[0], e[1]),
    )
    area = under = 0.0
    level = peak = 0
    for (t, step), (t_next, _) in itertools.pairwise(events):
        level += step
        peak = max(peak, level)
        area += level * (t_next - t)
        if level < concurrency:
            under += t_next - t
    span = events[-1][0] - events[0][0]
    return area / span, under / span, peak


def server_root(base_url: str) -> str:
    """The server's own address (``/metrics``, ``/reset_prefix_cache``) from its API base."""
    return re.sub(r"/v1/?$", "", base_url.rstrip("/"))


def scrape(base_url: str) -> dict[str, float]:
    """vLLM's counters we need, summed over labels (``name_total``)."""
    root = server_root(base_url)
    text = httpx.get(f"{root}/metrics", timeout=10).text
    want = {
        "vllm:prefix_cache_queries_total": "queries",
        "vllm:prefix_cache_hits_total": "hits",
        "vllm:prompt_tokens_total": "prompt_tokens",
        "vllm:generation_tokens_total": "generation_tokens",
        "vllm:num_requests_running": "running",
    }
    out = dict.fromkeys(want.values(), 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in want:
            out[want[name]] += float(line.rsplit(" ", 1)[1])
    return out


def reset_prefix_cache(base_url: str) -> None:
    """Empty vLLM's prefix cache (a dev-mode endpoint), so a run starts cold."""
    root = server_root(base_url)
    r = httpx.post(root + "/reset_prefix_cache", timeout=60)
    if r.status_code != 200:
        raise SystemExit(
            f"POST {root}/reset_prefix_cache answered {r.status_code}: start the server "
            "with VLLM_SERVER_DEV_MODE=1 for --cold"
        )


def run_refed(args: argparse.Namespace, out: Path) -> float:
    import graph.run
    import llm.balancer

    # The balancer builds one HTTPTransport per endpoint, looked up at call time.
    setattr(llm.balancer, "HTTPTransport", RecordingTransport)  # noqa: B010
    argv = [
        "--seeds",
        str(args.seeds),
        "--limit",
        str(args.references),
        "--base-url",
        args.base_url,
        "--model",
        args.model,
        "--out",
        str(out),
        "--per-reference",
        str(args.per_reference),
        "--concurrency",
        str(args.concurrency),
        "--log-level",
        "warning",
        *args.extra,
    ]
    t0 = time.monotonic()
    with contextlib.redirect_stdout(sys.stderr):
        code = graph.run.main(argv)
    if code != 0:
        raise SystemExit(f"graph.run exited {code}")
    return time.monotonic() - t0


async def replay(base_url: str, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    import aiohttp

    url = base_url.rstrip("/") + "/chat/completions"
    sem = asyncio.Semaphore(concurrency)
    tokens: list[int] = []
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=600)
    ) as session:

        async def one(body: dict[str, Any]) -> None:
            async with sem, session.post(url, json=body) as resp:
                data = await resp.json()
            tokens.append(int((data.get("usage") or {}).get("completion_tokens") or 0))

        t0 = time.monotonic()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.monotonic() - t0
    return {"wall": wall, "completion_tokens": sum(tokens), "requests": len(tokens)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.saturation", description=__doc__)
    p.add_argument("--base-url", default="http://127.0.0.1:8391/v1")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--seeds", type=Path, default=REPO / "examples" / "seeds.jsonl")
    p.add_argument("--references", type=int, default=3)
    p.add_argument("--per-reference", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--cold",
        action="store_true",
        help="empty vLLM's prefix cache before Refed's run and before the replay (POST "
        "/reset_prefix_cache: the server needs VLLM_SERVER_DEV_MODE=1)",
    )
    p.add_argument("extra", nargs="*", help="extra graph.run flags (after --)")
    args = p.parse_args(argv)
    info = {"machine": machine(), "versions": versions()}
    with tempfile.TemporaryDirectory(prefix="refed-sat-") as tmp:
        if args.cold:
            reset_prefix_cache(args.base_url)
        before = scrape(args.base_url)
        run_wall = run_refed(args, Path(tmp) / "run")
        after = scrape(args.base_url)
        accepted = json.loads((Path(tmp) / "run" / "run.json").read_text())["stats"]["accepted"]
    span = max(r["end"] for r in RECORDS) - min(r["start"] for r in RECORDS)
    refed_tokens = sum(r["completion_tokens"] for r in RECORDS)
    refed_prompt = sum(r["prompt_tokens"] for r in RECORDS)
    bodies = [r["body"] for r in sorted(RECORDS, key=lambda r: r["start"])]
    if args.cold:
        reset_prefix_cache(args.base_url)
    before_replay = scrape(args.base_url)
    rep = asyncio.run(replay(args.base_url, bodies, args.concurrency))
    after_replay = scrape(args.base_url)
    queries = after["queries"] - before["queries"]
    hits = after["hits"] - before["hits"]
    window_prompt = after["prompt_tokens"] - before["prompt_tokens"]
    rq = after_replay["queries"] - before_replay["queries"]
    rh = after_replay["hits"] - before_replay["hits"]
    result = {
        "concurrency": args.concurrency,
        "references": args.references,
        "per_reference": args.per_reference,
        "accepted": accepted,
        "requests": len(RECORDS),
        "refed_run_wall_s": run_wall,
        "refed_span_s": span,
        "refed_completion_tokens": refed_tokens,
        "refed_tok_s": refed_tokens / span,
        "replay_wall_s": rep["wall"],
        "replay_completion_tokens": rep["completion_tokens"],
        "replay_tok_s": rep["completion_tokens"] / rep["wall"],
        "prefix_hit_rate_refed": hits / queries if queries else None,
        "prefix_hit_rate_replay": rh / rq if rq else None,
        "refed_share_of_window_prompt_tokens": refed_prompt / window_prompt
        if window_prompt
        else None,
        "other_requests_running_at_start": before["running"],
        "prefix_cache": "reset before each" if args.cold else "the replay's as Refed left it",
    }
    result["ratio"] = result["refed_tok_s"] / result["replay_tok_s"]
    mean_in_flight, under, peak = occupancy(RECORDS, args.concurrency)
    result["refed_mean_in_flight"] = mean_in_flight
    result["refed_peak_in_flight"] = peak
    result["graph_run_flags"] = args.extra
    result["refed_share_of_span_under_concurrency"] = under
    print(json.dumps(result), file=sys.stderr)
    pct = lambda x: f"{100 * x:.0f}%" if x is not None else "-"  # noqa: E731
    print(
        table(
            [
                "in flight",
                "requests",
                "Refed tok/s",
                "replay tok/s",
                "Refed / replay",
                "Refed mean in flight",
                "prefix-cache hit rate (Refed)",
                "Refed's share of window prompt tokens",
            ],
            [
                [
                    args.concurrency,
                    len(RECORDS),
                    f"{result['refed_tok_s']:.1f}",
                    f"{result['replay_tok_s']:.1f}",
                    f"**{result['ratio']:.2f}**",
                    f"{mean_in_flight:.1f} ({pct(under)} of the time under {args.concurrency}), "
                    f"peak {peak}",
                    pct(result["prefix_hit_rate_refed"]),
                    pct(result["refed_share_of_window_prompt_tokens"]),
                ]
            ],
        )
    )
    if args.json:
        timings = [
            {k: r[k] for k in ("start", "end", "prompt_tokens", "completion_tokens")}
            for r in RECORDS
        ]
        args.json.write_text(json.dumps({**info, **result, "requests_timing": timings}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
