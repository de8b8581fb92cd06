"""How much made-up training material the junk detector needs: a base's head trained on the
negatives alone (no human-judgement set), for several numbers of Auto-J requests and epochs,
scored on the LIMA junk set (``metric.junk``) under the pipeline's criteria.

    python -m bench.metric_negatives                                   # 25,50,100,200 x 2,4
    python -m bench.metric_negatives --requests 50,200 --epochs 2 --seeds 0,1

The negatives are those of ``python -m metric run --negatives N`` (``metric.instruct``: each
request's preferred answer, another request's answer, a loop, an ask-back); a smaller count is
the first requests of the largest, so every count reads the same frozen-layer stores as the
run (same cache folder; what is missing is computed and kept). Results go to
``bench/results/metric_negatives.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import REPO, machine, table, versions

RESULTS = REPO / "bench" / "results" / "metric_negatives.json"


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metric_negatives", description=__doc__)
    p.add_argument("--base", default="minilm")
    p.add_argument("--requests", type=_ints, default=[25, 50, 100, 200])
    p.add_argument("--epochs", type=_ints, default=[2, 4])
    p.add_argument("--seeds", type=_ints, default=[0])
    p.add_argument("--junk", type=int, default=30, help="References in the junk set.")
    p.add_argument("--train-layers", type=int, default=1, help="Top layers trained (default 1).")
    p.add_argument("--max-len", type=int, help="Input tokens (default: the base's own).")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    import torch

    from metric.bases import open_base
    from metric.data import TASKS, build_task, rating_pairs
    from metric.experiment import junk_scores, merge_inputs
    from metric.instruct import TASK, junk_examples, negatives_examples
    from metric.junk import junk_set
    from metric.train import TrainConfig, predict, train_head
    from metric.trunk import default_cache_dir, trunk

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    data = build_task(TASKS["preference"], seed=0)
    negatives = negatives_examples(data, max(args.requests), seed=0)
    order = list(dict.fromkeys(e.group for e in negatives))
    items = junk_set(n=args.junk, seed=0)
    junk_exs = junk_examples(items)
    base = open_base(args.base, max_len=args.max_len, train_layers=args.train_layers)
    inputs = {TASK: base.inputs(negatives), "junk": base.inputs(junk_exs)}
    feats = trunk(base, inputs, [base.frozen], cache_dir=default_cache_dir(), log=print)
    everything = merge_inputs(list(inputs.values()))
    stores_s = time.monotonic() - started
    junk_ids = [e.uid for e in junk_exs]

    import importlib.metadata

    info = {
        "machine": machine(),
        "versions": {
            **versions(),
            "torch": torch.__version__,
            "transformers": importlib.metadata.version("transformers"),
        },
        "base": args.base,
        "junk_items": len(items),
        "train_layers": base.train_layers,
        "max_len": base.max_len,
        "frozen_layers_seconds": stores_s,
        "threads": torch.get_num_threads(),
    }
    rows: list[dict[str, Any]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def keep(row: dict[str, Any]) -> None:
        """Each row is written as soon as it is measured (a stopped run keeps what it did)."""
        rows.append(row)
        args.out.write_text(json.dumps({**info, "rows": rows}, indent=2) + "\n")

    for seed in args.seeds:
        scored = junk_scores(
            items, junk_exs, predict(base.head(seed), feats[base.frozen], everything, junk_ids)
        )
        keep({"requests": 0, "epochs": 0, "seed": seed, "seconds": 0.0, **scored})
        for n in args.requests:
            kept = set(order[:n])
            exs = [e for e in negatives if e.group in kept]
            cfg = replace(TrainConfig(), epochs=1, seed=seed)
            for epochs in args.epochs:
                head = base.head(seed)
                cfg = replace(cfg, epochs=epochs)
                pairs = rating_pairs(exs, cfg.min_gap)
                stats = train_head(head, feats[base.frozen], everything, exs, pairs, cfg)
                logits = predict(head, feats[base.frozen], everything, junk_ids)
                row = {"requests": n, "epochs": epochs, "seed": seed, "seconds": stats.seconds}
                keep({**row, **junk_scores(items, junk_exs, logits)})
                print(f"{n} requests, {epochs} epochs, seed {seed}: AUC {rows[-1]['auc']:.3f}")

    kinds = sorted(rows[0]["auc_by_kind"])
    shown = sorted(rows[0]["mean_by_kind"])
    head_row = ["requests", "epochs", "seed", "AUC"]
    head_row += [f"AUC vs {k}" for k in kinds] + [f"mean {k}" for k in shown] + ["train s"]
    cells = [
        [r["requests"] or "untrained", r["epochs"], r["seed"], f"{r['auc']:.3f}"]
        + [f"{r['auc_by_kind'][k]:.3f}" for k in kinds]
        + [f"{r['mean_by_kind'][k]:.2f}" for k in shown]
        + [f"{r['seconds']:.0f}"]
        for r in rows
    ]
    print(table(head_row, cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
