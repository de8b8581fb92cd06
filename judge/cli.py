"""``python -m judge`` (also ``refed judge``, ``python -m graph.judge``): the LLM judge on
its own.

    score   judge the records of a JSONL/Parquet file on a criteria set; writes each record
            back with its scores (``judge``) and, with ``--versus``, a pairwise verdict
    eval    run the judge on a human-judgement set and report its agreement with people
            (report.md, report.json, plot.png, judged.jsonl in ``--out``)
    export  build HEAP-style training records (pointwise, and good-vs-bad pairs) from
            human-judgement files, for fine-tuning a judge model

The judge's endpoint is ``--judge-base-url`` / ``--judge-model`` if given, else
``--base-url`` / ``--model``; with neither URL the embedded vLLM CPU server is started.
Every ``REFED_*`` setting applies (``--judge-logprobs``, ``--judge-rationale-chars``,
``--judge-per-criterion``, ``--concurrency``...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import prompts
from judge.evaluate import (
    JudgedLog,
    Timer,
    compare_pairs,
    pairwise_report,
    pointwise_report,
    score_items,
)
from judge.export import labelled_pair_records, pair_records, pointwise_records
from judge.report import fmt, write_pairwise, write_pointwise
from judge.scoring import JudgeOptions, compare, score_record
from judge.sets import (
    BUILTIN,
    HumanSet,
    HumanSetError,
    builtin,
    load_items,
    load_pairs,
    read_records,
    sample_items,
    sample_pairs,
)
from llm.client import LLMClient, LLMError
from llm.factory import judge_client, llm_endpoint
from llm.stops import RunStop
from state.criteria import CriteriaError, CriteriaSet
from state.logs import add_secret, redact
from state.settings import (
    ENDPOINT_FLAGS,
    RefedSettings,
    add_settings_flags,
    settings_from_args,
)

JUDGE_FLAGS = (
    *ENDPOINT_FLAGS,
    "seed",
    "judge_base_url",
    "judge_model",
    "judge_concurrency",
    "judge_temperature",
    "judge_logprobs",
    "judge_rationale_chars",
    "judge_per_criterion",
)


class UsageError(Exception):
    pass


# --- shared plumbing ----------------------------------------------------------------------------


def _pairs_arg(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        if "=" not in v:
            raise UsageError(f"{flag} wants NAME=KEY, got {v!r}")
        name, key = v.split("=", 1)
        out[name.strip()] = key.strip()
    return out


def _criteria(name: str, only: Sequence[str] | None) -> CriteriaSet:
    cset = prompts.criteria(name)
    if only:
        try:
            cset = cset.subset(list(only))
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
    return cset


def _options(settings: RefedSettings) -> JudgeOptions:
    return JudgeOptions(
        temperature=settings.judge_temperature,
        logprobs=settings.judge_logprobs,
        rationale_chars=settings.judge_rationale_chars,
        seed=settings.seed,
    )


_T = TypeVar("_T")


def run_closing(client: LLMClient, work: Awaitable[_T]) -> _T:
    """``asyncio.run(work)``, then close the client's connections in that same loop."""

    async def main() -> _T:
        try:
            return await work
        finally:
            await client.aclose()

    return asyncio.run(main())


class Ticker:
    """Progress on stderr, at most every few seconds."""

    def __init__(self, label: str, every: float = 10.0) -> None:
        self.label = label
        self.every = every
        self.start = self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self.last >= self.every:
            self.last = now
            rate = (now - self.start) / max(1, done)
            print(
                f"{self.label}: {done}/{total} ({rate:.2f} s each so far)",
                file=sys.stderr,
                flush=True,
            )


def _concurrency(settings: RefedSettings) -> int:
    return settings.judge_concurrency or settings.concurrency


# --- score ----------------------------------------------------------------------------------


def _judge_value(result: Any) -> dict[str, Any]:
    data: dict[str, Any] = result.model_dump(mode="json")
    data["mean"] = result.mean
    return data


async def score_file(
    client: LLMClient,
    cset: CriteriaSet,
    records: list[dict[str, Any]],
    mapping: dict[str, str],
    opts: JudgeOptions,
    *,
    per_criterion: bool,
    versus: str | None,
    key: str,
    chunk: int,
    write: Any,
    progress: Ticker | None = None,
) -> tuple[int, int]:
    """Judge ``records`` in order, in chunks, handing each finished record to ``write``."""
    ok = failed = 0

    async def one(n: int, record: dict[str, Any]) -> dict[str, Any]:
        fields = {name: str(record[mapping.get(name, name)]) for name in cset.fields}
        out = dict(record)
        try:
            judged = await score_record(
                client, cset, fields, opts, per_criterion=per_criterion, seed_parts=[n]
            )
            out[key] = _judge_value(judged.value)
            if versus is not None:
                pair = await compare(
                    client,
                    cset,
                    fields,
                    str(record[versus]),
                    fields[cset.target],
                    opts,
                    seed_parts=[n],
                )
                out[f"{key}_pairwise"] = pair.value.model_dump(mode="json")
        except LLMError as exc:
            out[key] = None
            out[f"{key}_error"] = str(exc)
        return out

    for start in range(0, len(records), chunk):
        batch = records[start : start + chunk]
        done = await asyncio.gather(*(one(start + i, r) for i, r in enumerate(batch)))
        for row in done:
            if row.get(key) is None:
                failed += 1
            else:
                ok += 1
            write(row)
        if progress is not None:
            progress(start + len(batch), len(records))
    return ok, failed


def _check_mapping(
    cset: CriteriaSet, mapping: dict[str, str], records: list[dict[str, Any]]
) -> None:
    unknown = [n for n in mapping if n not in cset.fields]
    if unknown:
        raise UsageError(
            f"--field names {unknown} are not fields of {cset.name!r}: {list(cset.fields)}"
        )
    for n, record in enumerate(records):
        for name in cset.fields:
            if mapping.get(name, name) not in record:
                raise UsageError(
                    f"record {n} has no field {mapping.get(name, name)!r} for {name!r} "
                    f"(record has: {', '.join(record)}); map it with --field {name}=KEY"
                )


def cmd_score(args: argparse.Namespace, settings: RefedSettings) -> int:
    source = Path(args.input)
    try:
        records = read_records(source)
    except HumanSetError as exc:
        raise UsageError(str(exc)) from None
    if args.limit:
        records = records[: args.limit]
    cset = _criteria(args.criteria or settings.judge_criteria, args.criterion)
    mapping = _pairs_arg(args.field, "--field")
    _check_mapping(cset, mapping, records)
    if args.versus is not None and any(args.versus not in r for r in records):
        raise UsageError(f"--versus {args.versus!r}: not a field of every record")
    out = Path(args.out) if args.out else source.with_name(source.stem + ".judged.jsonl")
    rows: list[dict[str, Any]] = []
    parquet = out.suffix == ".parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    with llm_endpoint(settings, out.parent, judge=True) as settings:
        model = settings.judge_model or settings.model
        client = judge_client(settings)
        with contextlib.ExitStack() as stack:
            fh = None if parquet else stack.enter_context(out.open("w", encoding="utf-8"))

            def write(row: dict[str, Any]) -> None:
                if fh is None:
                    rows.append(row)
                else:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    fh.flush()

            ok, failed = run_closing(
                client,
                score_file(
                    client,
                    cset,
                    records,
                    mapping,
                    _options(settings),
                    per_criterion=settings.judge_per_criterion,
                    versus=args.versus,
                    key=args.key,
                    chunk=max(8, 4 * _concurrency(settings)),
                    write=write,
                    progress=Ticker("scored"),
                ),
            )
    if parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), out)
    print(
        f"{ok} records scored, {failed} failed, on {cset.name} ({', '.join(cset.names)}) "
        f"by {model}; written to {out}",
        file=sys.stderr,
    )
    return 0 if ok or not records else 1


# --- eval -----------------------------------------------------------------------------------


def human_set(args: argparse.Namespace) -> HumanSet:
    """A built-in set (optionally at another path), or one described by flags."""
    labels: dict[Any, Any] = {}
    for raw, vote in _pairs_arg(args.label, "--label").items():
        if vote not in ("first", "second", "tie"):
            raise UsageError(f"--label {raw}={vote}: the vote must be first, second or tie")
        labels[raw] = vote
        if raw.lstrip("-").isdigit():
            labels[int(raw)] = vote
    if args.set:
        hset = builtin(args.set)
        if args.file:
            hset = replace(hset, path=Path(args.file))
        if args.criteria:
            hset = replace(hset, criteria=args.criteria)
        return hset
    if not args.file:
        raise UsageError(f"give --set ({', '.join(BUILTIN)}) or --file with field flags")
    if not args.criteria:
        raise UsageError("--file needs --criteria (a built-in set name or a TOML file)")
    path = Path(args.file)
    cset = prompts.criteria(args.criteria)
    mapping = _pairs_arg(args.field, "--field")
    fields = {name: mapping.get(name, name) for name in cset.fields}
    if args.pairwise:
        fields = {k: v for k, v in fields.items() if k != cset.target}
    extra: dict[str, Any] = {}
    if labels:
        extra["labels"] = labels
    return HumanSet(
        name=path.stem,
        path=path,
        criteria=args.criteria,
        fields=fields,
        kind="pairwise" if args.pairwise else "pointwise",
        scores_key=args.scores_key,
        doc_key=args.doc_key,
        system_key=args.system_key,
        id_key=args.id_key,
        primary=args.primary or ("document" if args.doc_key else "record"),
        first_key=args.first_key,
        second_key=args.second_key,
        label_key=args.label_key,
        **extra,
    )


def _sample_note(total: int, chosen: int, args: argparse.Namespace, groups: str) -> str:
    if chosen >= total:
        return "the full set"
    return (
        f"deterministic sample of {chosen} of {total} ({groups}; --sample {args.sample} "
        f"--sample-seed {args.sample_seed})"
    )


def cmd_eval(args: argparse.Namespace, settings: RefedSettings) -> int:
    hset = human_set(args)
    cset = _criteria(hset.criteria, args.criterion)
    out = Path(args.out) if args.out else Path("runs") / "judge-eval" / hset.name
    opts = _options(settings)
    per_criterion = settings.judge_per_criterion
    with llm_endpoint(settings, out, judge=True) as settings:
        model = settings.judge_model or settings.model
        config = {
            "set": hset.name,
            "file": str(hset.path),
            "criteria": cset.name,
            "criteria_version": cset.version,
            "criteria_names": list(cset.names),
            "model": model,
            "options": {
                "temperature": opts.temperature,
                "logprobs": opts.logprobs,
                "rationale_chars": opts.rationale_chars,
                "seed": opts.seed,
                "per_criterion": per_criterion,
            },
            "prompts": {n: prompts.load(n).version for n in ("judge_pointwise", "judge_pairwise")},
        }
        if args.fresh and (out / "judged.jsonl").exists():
            (out / "judged.jsonl").unlink()
        client = judge_client(settings)
        if hset.kind == "pairwise":
            all_pairs = load_pairs(hset)
            pairs = sample_pairs(all_pairs, args.sample, args.sample_seed)
            note = _sample_note(len(all_pairs), len(pairs), args, "pairs drawn one by one")
            print(f"{hset.name}: {len(pairs)} pairs ({note}) on {model}", file=sys.stderr)
            log = JudgedLog(out, config)
            timer = Timer()
            try:
                compared = run_closing(
                    client,
                    compare_pairs(client, cset, pairs, opts, log=log, progress=Ticker("compared")),
                )
            finally:
                log.close()
            preport = pairwise_report(
                set_name=hset.name,
                cset=cset,
                model=model,
                pairs=pairs,
                compared=compared,
                opts=opts,
                seconds=timer.seconds(),
                concurrency=_concurrency(settings),
                sample=note,
            )
            write_pairwise(out, preport)
            a = preport.agreement
            print(
                f"agreement with ties {fmt(a.with_ties)}, without ties {fmt(a.without_ties)} "
                f"({preport.judged} pairs, {preport.failed} failed); report in {out}",
                file=sys.stderr,
            )
            return 0 if preport.judged else 1
        all_items = load_items(hset)
        items = sample_items(all_items, args.sample, args.sample_seed)
        note = _sample_note(len(all_items), len(items), args, "whole documents")
        print(f"{hset.name}: {len(items)} records ({note}) on {model}", file=sys.stderr)
        log = JudgedLog(out, config)
        timer = Timer()
        try:
            scored = run_closing(
                client,
                score_items(
                    client,
                    cset,
                    items,
                    opts,
                    per_criterion=per_criterion,
                    log=log,
                    progress=Ticker("judged"),
                ),
            )
        finally:
            log.close()
        report = pointwise_report(
            set_name=hset.name,
            cset=cset,
            model=model,
            items=items,
            scored=scored,
            opts=opts,
            per_criterion=per_criterion,
            primary=hset.primary,
            seconds=timer.seconds(),
            concurrency=_concurrency(settings),
            sample=note,
        )
    write_pointwise(out, report, items, scored)
    avg = report.average[report.primary]
    print(
        f"{report.primary}-level average Spearman {fmt(avg.spearman)}, Kendall "
        f"{fmt(avg.kendall)} ({report.judged} records, {report.failed} failed, "
        f"{report.seconds_per_record:.2f} s per record); report in {out}",
        file=sys.stderr,
    )
    return 0 if report.judged else 1


# --- export ---------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace, settings: RefedSettings) -> int:
    sets: list[HumanSet] = [builtin(name) for name in args.set or []]
    if args.file:
        one = argparse.Namespace(**{**vars(args), "set": None})
        sets.append(human_set(one))
    if not sets:
        raise UsageError(f"give --set ({', '.join(BUILTIN)}), repeatable, or --file")
    kinds = {k.strip() for k in args.kinds.split(",")}
    if not kinds <= {"pointwise", "pair"}:
        raise UsageError("--kinds takes pointwise, pair or both (comma-separated)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with out.open("w", encoding="utf-8") as fh:
        for hset in sets:
            cset = _criteria(hset.criteria, args.criterion)
            records: Iterator[dict[str, Any]]
            if hset.kind == "pairwise":
                pairs = sample_pairs(load_pairs(hset), args.sample, args.sample_seed)
                records = labelled_pair_records(hset.name, cset, pairs, seed=args.sample_seed)
                if "pair" not in kinds:
                    continue
            else:
                items = sample_items(load_items(hset), args.sample, args.sample_seed)
                parts: list[Iterator[dict[str, Any]]] = []
                if "pointwise" in kinds:
                    parts.append(pointwise_records(hset.name, cset, items))
                if "pair" in kinds:
                    parts.append(
                        pair_records(
                            hset.name,
                            cset,
                            items,
                            min_gap=args.min_gap,
                            max_per_group=args.max_pairs_per_group,
                            seed=args.sample_seed,
                        )
                    )
                records = (r for part in parts for r in part)
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                key = f"{hset.name} {record['kind']}"
                counts[key] = counts.get(key, 0) + 1
    for key, n in counts.items():
        print(f"{key}: {n}", file=sys.stderr)
    print(f"{sum(counts.values())} training records written to {out}", file=sys.stderr)
    return 0


# --- the command line ----------------------------------------------------------------------


def _set_flags(p: argparse.ArgumentParser, *, many: bool = False) -> None:
    if many:
        p.add_argument(
            "--set", action="append", help=f"Built-in sets, repeatable: {', '.join(BUILTIN)}."
        )
    else:
        p.add_argument("--set", help=f"A built-in human-judgement set: {', '.join(BUILTIN)}.")
    p.add_argument("--file", help="A human-judgement file (JSONL, JSON list, Parquet).")
    p.add_argument("--criteria", help="Criteria set: built-in name or TOML file.")
    p.add_argument("--criterion", action="append", help="Only these criteria (repeatable).")
    p.add_argument(
        "--field", action="append", help="NAME=KEY: criteria field NAME is record key KEY."
    )
    p.add_argument("--scores-key", default="scores", help="Human scores (criterion -> number).")
    p.add_argument("--doc-key", help="Records about the same source (document level).")
    p.add_argument("--system-key", help="The system that wrote the text (system level).")
    p.add_argument("--id-key", help="A record id.")
    p.add_argument("--primary", choices=["record", "document", "system"], help="Headline level.")
    p.add_argument("--pairwise", action="store_true", help="A pairwise set (two texts, a label).")
    p.add_argument("--first-key", default="response 1")
    p.add_argument("--second-key", default="response 2")
    p.add_argument("--label-key", default="label")
    p.add_argument(
        "--label",
        action="append",
        help="VALUE=first|second|tie: how to read the label (default 0, 1, 2).",
    )
    p.add_argument("--sample", type=int, help="Use about N records (whole documents).")
    p.add_argument("--sample-seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m judge",
        description="The metric judge on its own: score records, measure agreement with "
        "human judgements, export HEAP-style training data.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    score = sub.add_parser("score", help="Judge the records of a JSONL/Parquet file.")
    score.add_argument("input", help="JSONL, JSON list or Parquet file of records.")
    score.add_argument("--out", help="Output (.jsonl or .parquet); default INPUT.judged.jsonl.")
    score.add_argument("--criteria", help="Criteria set (default: --judge-criteria setting).")
    score.add_argument("--criterion", action="append", help="Only these criteria (repeatable).")
    score.add_argument(
        "--field", action="append", help="NAME=KEY: criteria field NAME is record key KEY."
    )
    score.add_argument(
        "--versus", help="Also compare the target field with this record key (pairwise)."
    )
    score.add_argument("--key", default="judge", help="Name of the added field.")
    score.add_argument("--limit", type=int, help="Only the first N records.")
    add_settings_flags(score, only=JUDGE_FLAGS)

    ev = sub.add_parser("eval", help="Agreement of the judge with a human-judgement set.")
    _set_flags(ev)
    ev.add_argument("--out", help="Report folder (default runs/judge-eval/SET).")
    ev.add_argument(
        "--fresh", action="store_true", help="Do not reuse judged.jsonl from an earlier run."
    )
    add_settings_flags(ev, only=JUDGE_FLAGS)

    ex = sub.add_parser("export", help="HEAP-style training records from human judgements.")
    _set_flags(ex, many=True)
    ex.add_argument("--out", required=True, help="Output JSONL.")
    ex.add_argument("--kinds", default="pointwise,pair", help="pointwise, pair, or both.")
    ex.add_argument("--min-gap", type=float, default=1.0, help="Smallest rating gap of a pair.")
    ex.add_argument("--max-pairs-per-group", type=int, help="Cap pairs per document+criterion.")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
        add_secret(settings.api_key.get_secret_value())
        command = {"score": cmd_score, "eval": cmd_eval, "export": cmd_export}[args.command]
        return command(args, settings)
    except (UsageError, HumanSetError, CriteriaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunStop as exc:  # the server refuses the key or the model: say so, no traceback
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
