"""``python -m metric``: the learned metric judge.

run     train and evaluate from scratch all three settings (single-task, multi-task,
        leave-one-task-out) with the baselines; writes OUT/results.md, OUT/results.json,
        OUT/run.log and the multi-task model OUT/model (a Hugging Face folder)
score   score a JSONL file of records on a criteria set with a saved model (a folder:
        in-process; a URL: a vLLM server serving the folder)
serve   serve a saved folder with vLLM's OpenAI-compatible server (pooling: /score)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from metric.data import TASKS, Caps, task_file
from metric.llm_baseline import LLMConfig
from metric.train import TrainConfig


def _cap(value: str) -> int | None:
    return None if value.lower() in ("none", "all", "0") else int(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m metric", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="Train and evaluate all settings from scratch.")
    run.add_argument("--out", type=Path, default=Path("runs/metric"))
    run.add_argument(
        "--tasks", default=",".join(TASKS), help=f"Built-in tasks: {', '.join(TASKS)}."
    )
    run.add_argument("--task-file", action="append", default=[], help="A user task (TOML).")
    run.add_argument("--settings", default="single,multi,loto")
    d, t = Caps(), TrainConfig()
    run.add_argument(
        "--train-cap",
        type=_cap,
        default=d.train_per_criterion,
        help="Training texts per (set, criterion) (none: all).",
    )
    run.add_argument(
        "--test-cap",
        type=_cap,
        default=d.test_per_criterion,
        help="Test texts per (set, criterion) (none: all).",
    )
    run.add_argument(
        "--max-members",
        type=_cap,
        default=d.max_members,
        help="Training texts per source and criterion.",
    )
    run.add_argument("--test-fraction", type=float, default=0.3)
    run.add_argument("--epochs", type=int, default=t.epochs)
    run.add_argument("--batch-size", type=int, default=t.batch_size)
    run.add_argument("--lr", type=float, default=t.lr)
    run.add_argument("--head-lr", type=float, default=t.head_lr)
    run.add_argument("--regression-weight", type=float, default=t.regression_weight)
    run.add_argument("--min-gap", type=float, default=t.min_gap)
    run.add_argument("--train-layers", type=int, default=t.train_layers)
    run.add_argument("--max-len", type=int, default=t.max_len)
    run.add_argument("--seed", type=int, default=t.seed)
    run.add_argument("--no-bf16", action="store_true", help="float32 throughout (slower).")
    run.add_argument("--threads", type=int, help="torch threads (default: torch's).")
    lc = LLMConfig()
    run.add_argument(
        "--llm-base-url",
        default=lc.base_url,
        help="OpenAI-compatible server for the LLM-judge baseline ('' to skip).",
    )
    run.add_argument("--llm-model", default=lc.model)
    run.add_argument(
        "--llm-records",
        type=int,
        default=lc.slice_records,
        help="LLM baseline: records per rated set (live calls).",
    )
    run.add_argument(
        "--llm-pairs",
        type=int,
        default=lc.slice_pairs,
        help="LLM baseline: pairs per pairwise set (live calls).",
    )
    run.add_argument(
        "--llm-reuse",
        type=Path,
        default=lc.reuse_dir,
        help="Folder of `judge eval` reports to reuse ('' to always call).",
    )

    sc = sub.add_parser("score", help="Score records with a saved model.")
    sc.add_argument("input", type=Path, help="JSONL records with the criteria set's fields.")
    sc.add_argument("--model", required=True, help="Saved folder, or URL of a vLLM server.")
    sc.add_argument("--criteria", default="instruction", help="Criteria set (name or TOML).")
    sc.add_argument("--out", type=Path, help="Output JSONL (default INPUT.metric.jsonl).")
    sc.add_argument("--key", default="metric")

    tb = sub.add_parser("table", help="Re-render results.md and the model card.")
    tb.add_argument("out", type=Path, nargs="?", default=Path("runs/metric"))

    sv = sub.add_parser("serve", help="Serve a saved folder with vLLM (/score).")
    sv.add_argument("--model", type=Path, default=Path("runs/metric/model"))
    sv.add_argument("--port", type=int, default=8392)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from metric.experiment import RunConfig, run

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        print(f"unknown tasks {unknown}; built-in: {', '.join(TASKS)}", file=sys.stderr)
        return 2
    cfg = RunConfig(
        out=args.out,
        tasks=tasks,
        caps=Caps(args.train_cap, args.test_cap, args.max_members),
        train=TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            head_lr=args.head_lr,
            regression_weight=args.regression_weight,
            min_gap=args.min_gap,
            train_layers=args.train_layers,
            max_len=args.max_len,
            seed=args.seed,
            bf16=not args.no_bf16,
        ),
        llm=LLMConfig(
            base_url=args.llm_base_url or None,
            model=args.llm_model,
            slice_records=args.llm_records,
            slice_pairs=args.llm_pairs,
            reuse_dir=args.llm_reuse if args.llm_reuse and str(args.llm_reuse) else None,
            seed=args.seed,
        ),
        test_fraction=args.test_fraction,
        settings=tuple(s.strip() for s in args.settings.split(",") if s.strip()),
        threads=args.threads,
        extra_tasks=tuple(task_file(f) for f in args.task_file),
    )
    run(cfg)
    print((args.out / "results.md").read_text())
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import prompts
    from metric.serving import metric_judge_for

    cset = prompts.criteria(args.criteria)
    judge = metric_judge_for(args.model)
    print(f"scoring with {judge.backend}", file=sys.stderr)
    records = [json.loads(line) for line in args.input.read_text().splitlines() if line.strip()]
    missing = [f for f in cset.fields if records and f not in records[0]]
    if missing:
        print(f"records lack fields {missing} of criteria set {cset.name!r}", file=sys.stderr)
        return 2
    start = time.monotonic()
    results = judge.score_records(cset, [{f: str(r[f]) for f in cset.fields} for r in records])
    out = args.out or args.input.with_suffix(".metric.jsonl")
    with out.open("w") as fh:
        for r, res in zip(records, results, strict=True):
            fh.write(json.dumps({**r, args.key: {**res.values(), "backend": judge.backend}}) + "\n")
    print(
        f"{len(records)} records in {time.monotonic() - start:.1f} s -> {out} ({judge.backend})",
        file=sys.stderr,
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    from metric.serving import encoder_server

    # SIGTERM (and SIGINT, which a background job ignores) stop the server cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with encoder_server(args.model, args.port) as url:
        print(f"serving {args.model} at {url} (POST {url}/score); Ctrl-C stops", file=sys.stderr)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from metric.experiment import model_card, results_markdown

    results = json.loads((args.out / "results.json").read_text())
    (args.out / "results.md").write_text(results_markdown(results))
    if (args.out / "model" / "config.json").is_file():
        (args.out / "model" / "README.md").write_text(model_card(results))
    print((args.out / "results.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"run": cmd_run, "score": cmd_score, "serve": cmd_serve, "table": cmd_table}
    return commands[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
