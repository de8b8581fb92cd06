"""``python -m metric``: the learned metric judge.

run     train and evaluate from scratch every setting (single-task, multi-task, multi-task
        with negatives, leave-one-task-out) for each base and seed, with the baselines and
        the junk set; writes OUT/results.md, OUT/results.json, OUT/run.log and the served
        model OUT/model (a Hugging Face folder; a second base: OUT/model-BASE)
score   score a JSONL file of records on a criteria set with a saved model (a folder:
        in-process; a URL: a vLLM server serving the folder)
serve   serve a saved folder with vLLM's OpenAI-compatible server (pooling runner)
table   re-render OUT/results.md from OUT/results.json
merge   one table from runs of other seeds (or bases) on the same data: OUT/results.json and
        OUT/results.md from RUN/results.json of each run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from metric.data import TASKS, Caps, task_file
from metric.llm_baseline import SKIP_HINT, Endpoint, LLMConfig, resolve_endpoint
from metric.train import TrainConfig


@dataclass(frozen=True)
class Sizes:
    """What a run reads and trains: the full run's defaults, and ``--quick``'s (a CI-sized
    run, nothing cached). A flag given explicitly wins over either."""

    caps: Caps
    seeds: tuple[int, ...]
    epochs: int
    negatives: int
    junk: int
    max_len: int | None
    """Input tokens (None: the base's own)."""


FULL = Sizes(Caps(None, None, None), (0, 1, 2), TrainConfig().epochs, 200, 30, None)
QUICK = Sizes(Caps(24, 24, 4), (0,), 1, 8, 4, 128)


def _cap(value: str) -> int | None:
    return None if value.lower() in ("none", "all", "0") else int(value)


def _ints(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in value.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    from metric.bases import BASES, DEFAULT_BASE

    p = argparse.ArgumentParser(prog="python -m metric", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="Train and evaluate all settings from scratch.")
    run.add_argument("--out", type=Path, default=Path("runs/metric"))
    run.add_argument(
        "--quick",
        action="store_true",
        help="A small run (CI): a few texts per criterion, one seed, 128 tokens, no cache.",
    )
    run.add_argument(
        "--tasks", default=",".join(TASKS), help=f"Built-in tasks: {', '.join(TASKS)}."
    )
    run.add_argument("--task-file", action="append", default=[], help="A user task (TOML).")
    run.add_argument(
        "--bases",
        default=DEFAULT_BASE,
        help=f"Bases to train, comma-separated: {', '.join(BASES)} (the first is saved as "
        "OUT/model).",
    )
    run.add_argument("--seeds", type=_ints, help="Training seeds (default 0,1,2).")
    run.add_argument("--split-seed", type=int, default=0, help="Seed of the source splits.")
    run.add_argument("--settings", default="single,multi,loto")
    run.add_argument(
        "--train-cap", type=_cap, default=None, help="Training texts per (set, criterion)."
    )
    run.add_argument("--test-cap", type=_cap, default=None, help="Test texts per (set, criterion).")
    run.add_argument(
        "--max-members", type=_cap, default=None, help="Training texts per source and criterion."
    )
    run.add_argument("--test-fraction", type=float, default=0.3)
    t = TrainConfig()
    run.add_argument("--epochs", type=int, help=f"Training epochs (default {t.epochs}).")
    run.add_argument("--batch-size", type=int, default=t.batch_size)
    run.add_argument("--lr", type=float, default=t.lr)
    run.add_argument("--head-lr", type=float, default=t.head_lr)
    run.add_argument("--regression-weight", type=float, default=t.regression_weight)
    run.add_argument("--min-gap", type=float, default=t.min_gap)
    run.add_argument("--train-layers", type=int, default=t.train_layers)
    run.add_argument("--max-len", type=int, help="Input tokens (default: the base's own).")
    run.add_argument(
        "--negatives",
        type=int,
        help="Auto-J training requests made into negatives (default 200; 0: none).",
    )
    run.add_argument("--junk", type=int, help="References in the junk set (default 30; 0: none).")
    run.add_argument(
        "--cache",
        type=Path,
        help="Where the frozen layers' output is kept (default ~/.cache/refed/metric).",
    )
    run.add_argument("--no-cache", action="store_true", help="Compute it, keep nothing.")
    run.add_argument(
        "--keep-lower-layer",
        action="store_true",
        help="Also keep the output one layer lower (for a later --train-layers one higher).",
    )
    run.add_argument("--threads", type=int, help="torch threads (default: torch's).")
    run.add_argument(
        "--llm-base-url",
        help="OpenAI-compatible server for the LLM-judge baseline; 'embedded' starts the "
        "embedded one; 'none' skips it (default: Refed's configured endpoint, else the "
        "embedded server when it is installed, except with --quick).",
    )
    run.add_argument("--llm-model", help="Its model (default: Refed's configured model).")
    lc = LLMConfig()
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

    tb = sub.add_parser("table", help="Re-render results.md.")
    tb.add_argument("out", type=Path, nargs="?", default=Path("runs/metric"))

    mg = sub.add_parser("merge", help="Merge runs of other seeds or bases into one table.")
    mg.add_argument("out", type=Path, help="Folder for the merged results.json and results.md.")
    mg.add_argument("runs", type=Path, nargs="+", help="Run folders (each with results.json).")

    sv = sub.add_parser("serve", help="Serve a saved folder with vLLM (pooling runner).")
    sv.add_argument("--model", type=Path, default=Path("runs/metric/model"))
    sv.add_argument("--port", type=int, default=8392)
    return p


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@contextlib.contextmanager
def llm_endpoint(args: argparse.Namespace, out: Path) -> Iterator[Endpoint]:
    """The LLM baseline's endpoint for the run (the embedded server runs as long as it)."""
    end = resolve_endpoint(args.llm_base_url, args.llm_model, embedded_fallback=not args.quick)
    if not end.embedded:
        yield end
        return
    from embedded import EmbeddedServer, EmbeddedServerError

    try:
        server = EmbeddedServer(log_file=out / "vllm.log").start()
    except EmbeddedServerError as exc:
        yield Endpoint(
            None,
            end.model,
            f"LLM-judge baseline: skipped (embedded server: {first_line(exc)}). "
            f"To enable it: {SKIP_HINT}.",
        )
        return
    try:
        yield Endpoint(
            server.base_url,
            server.model,
            f"LLM-judge baseline: {server.model} on the embedded server ({server.base_url})",
        )
    finally:
        server.stop()


def cmd_run(args: argparse.Namespace) -> int:
    from metric.bases import BASES
    from metric.experiment import RunConfig, run
    from state.logs import configure_logging

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    unknown = [t for t in tasks if t not in TASKS]
    bases = tuple(b.strip() for b in args.bases.split(",") if b.strip())
    unknown_bases = [b for b in bases if b not in BASES]
    if unknown or unknown_bases or not bases:
        print(
            f"unknown tasks {unknown} or bases {unknown_bases}; built-in tasks: "
            f"{', '.join(TASKS)}; bases: {', '.join(BASES)}",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    # The LLM client's retries and warnings go to a file, never to the console.
    configure_logging(args.out / "llm.log", level="info", console_level="critical")
    d = QUICK if args.quick else FULL
    given = Caps(args.train_cap, args.test_cap, args.max_members)
    caps = d.caps if given == Caps(None, None, None) else given
    seeds = d.seeds if args.seeds is None else args.seeds
    epochs = d.epochs if args.epochs is None else args.epochs
    negatives = d.negatives if args.negatives is None else args.negatives
    junk = d.junk if args.junk is None else args.junk
    max_len = args.max_len or d.max_len
    with llm_endpoint(args, args.out) as end:
        print(end.note, file=sys.stderr)
        cfg = RunConfig(
            out=args.out,
            tasks=tasks,
            bases=bases,
            seeds=seeds,
            split_seed=args.split_seed,
            caps=caps,
            train=TrainConfig(
                epochs=epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                head_lr=args.head_lr,
                regression_weight=args.regression_weight,
                min_gap=args.min_gap,
                train_layers=args.train_layers,
            ),
            llm=LLMConfig(
                base_url=end.url,
                model=end.model,
                slice_records=args.llm_records,
                slice_pairs=args.llm_pairs,
                reuse_dir=args.llm_reuse if args.llm_reuse and str(args.llm_reuse) else None,
                seed=args.split_seed,
            ),
            test_fraction=args.test_fraction,
            settings=tuple(s.strip() for s in args.settings.split(",") if s.strip()),
            negatives=negatives,
            junk=junk,
            max_len={b: max_len for b in bases} if max_len else {},
            keep_lower=args.keep_lower_layer,
            threads=args.threads,
            extra_tasks=tuple(task_file(f) for f in args.task_file),
        )
        if args.no_cache or (args.quick and not args.cache):
            cfg = replace(cfg, cache_dir=None)
        elif args.cache:
            cfg = replace(cfg, cache_dir=args.cache)
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

    from metric.serving import model_server

    # SIGTERM (and SIGINT, which a background job ignores) stop the server cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from metric.serving import kind_of

    route = "/classify" if kind_of(args.model) == "decoder" else "/score"
    with model_server(args.model, args.port) as url:
        print(f"serving {args.model} at {url} (POST {url}{route}); Ctrl-C stops", file=sys.stderr)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from metric.report import results_markdown

    results = json.loads((args.out / "results.json").read_text())
    (args.out / "results.md").write_text(results_markdown(results))
    print((args.out / "results.md").read_text())
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from metric.report import merge_results, results_markdown

    parts = []
    for run_dir in args.runs:
        path = run_dir / "results.json"
        try:
            parts.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            print(f"cannot read {path}: {first_line(exc)}", file=sys.stderr)
            return 2
    try:
        merged = merge_results(parts)
    except ValueError as exc:
        print(f"cannot merge {', '.join(map(str, args.runs))}: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(merged, indent=1))
    (args.out / "results.md").write_text(results_markdown(merged))
    print((args.out / "results.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "run": cmd_run,
        "score": cmd_score,
        "serve": cmd_serve,
        "table": cmd_table,
        "merge": cmd_merge,
    }
    return commands[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
