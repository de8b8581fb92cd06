"""How well a judge agrees with people: the arithmetic, and running a judge over a set.

Correlations follow the way G-Eval and UniEval report SummEval and Topical-Chat:

- record (turn) level: Spearman / Kendall tau-b between judge and human scores over
  all records;
- document (summary) level: the same within each document (the summaries of one
  article), averaged over documents; documents where either side is constant have no
  correlation and are left out (counted as ``skipped``);
- system level: each system's scores averaged over the documents, then correlated
  across systems.

A correlation is NaN when it is undefined (fewer than two points, or a constant side).
Pairwise verdicts are scored by agreement with the human label, with and without ties.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from judge.scoring import JudgeOptions, compare, score_record
from judge.sets import HumanItem, HumanPair
from llm.client import LLMClient, LLMError
from state.criteria import CriteriaSet
from state.judgements import (
    Agreement,
    Correlation,
    PairwiseReport,
    PairwiseVerdict,
    PointwiseReport,
    PointwiseResult,
    Vote,
)

NAN = float("nan")
LEVELS = ("record", "document", "system")


# --- correlation arithmetic ---------------------------------------------------------------


def _constant(values: Sequence[float]) -> bool:
    return max(values) - min(values) == 0


TIE_DIGITS = 9
"""Scores equal to this many decimals are ties, so float noise in sums and means (of
probability-weighted scores, of averaged ratings) cannot break a tie either way."""


def correlation(judge: Sequence[float], human: Sequence[float]) -> Correlation:
    """Spearman and Kendall tau-b, NaN when undefined."""
    if len(judge) != len(human):
        raise ValueError(f"{len(judge)} judge scores but {len(human)} human scores")
    n = len(judge)
    judge = [round(x, TIE_DIGITS) for x in judge]
    human = [round(x, TIE_DIGITS) for x in human]
    if n < 2 or _constant(judge) or _constant(human):
        return Correlation(spearman=NAN, kendall=NAN, n=n)
    from scipy import stats  # imported when first needed: it is slow to import

    rho = float(stats.spearmanr(judge, human).statistic)
    tau = float(stats.kendalltau(judge, human).statistic)
    return Correlation(spearman=rho, kendall=tau, n=n)


def _groups(keys: Sequence[str | None]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        if k is not None:
            out[k].append(i)
    return out


def document_level(
    judge: Sequence[float], human: Sequence[float], docs: Sequence[str | None]
) -> Correlation:
    """Mean over documents of the within-document correlation."""
    found = []
    skipped = 0
    for idx in _groups(docs).values():
        c = correlation([judge[i] for i in idx], [human[i] for i in idx])
        if math.isnan(c.spearman) or math.isnan(c.kendall):
            skipped += 1
        else:
            found.append(c)
    if not found:
        return Correlation(spearman=NAN, kendall=NAN, n=0, skipped=skipped)
    return Correlation(
        spearman=sum(c.spearman for c in found) / len(found),
        kendall=sum(c.kendall for c in found) / len(found),
        n=len(found),
        skipped=skipped,
    )


def system_level(
    judge: Sequence[float], human: Sequence[float], systems: Sequence[str | None]
) -> Correlation:
    """Correlation across systems of their mean scores."""
    groups = _groups(systems)
    means_j = [sum(judge[i] for i in idx) / len(idx) for idx in groups.values()]
    means_h = [sum(human[i] for i in idx) / len(idx) for idx in groups.values()]
    return correlation(means_j, means_h)


def mean_correlation(rows: Sequence[Correlation]) -> Correlation:
    """Mean over criteria (NaN criteria left out, counted as skipped)."""
    ok = [r for r in rows if not (math.isnan(r.spearman) or math.isnan(r.kendall))]
    if not ok:
        return Correlation(spearman=NAN, kendall=NAN, n=0, skipped=len(rows))
    return Correlation(
        spearman=sum(r.spearman for r in ok) / len(ok),
        kendall=sum(r.kendall for r in ok) / len(ok),
        n=len(ok),
        skipped=len(rows) - len(ok),
    )


def agreement_levels(
    judge: dict[str, list[float]],
    human: dict[str, list[float]],
    docs: Sequence[str | None],
    systems: Sequence[str | None],
) -> tuple[dict[str, dict[str, Correlation]], dict[str, Correlation]]:
    """Every applicable level for every criterion, and each level's mean over criteria."""
    levels: dict[str, dict[str, Correlation]] = {"record": {}}
    if any(d is not None for d in docs):
        levels["document"] = {}
    if any(s is not None for s in systems):
        levels["system"] = {}
    for name in judge:
        j, h = judge[name], human[name]
        levels["record"][name] = correlation(j, h)
        if "document" in levels:
            levels["document"][name] = document_level(j, h, docs)
        if "system" in levels:
            levels["system"][name] = system_level(j, h, systems)
    average = {level: mean_correlation(list(rows.values())) for level, rows in levels.items()}
    return levels, average


# --- pairwise arithmetic --------------------------------------------------------------------


def pairwise_agreement(
    predicted: Sequence[Vote], gold: Sequence[Vote], consistent: Sequence[bool] | None = None
) -> Agreement:
    """Agreement with human preferences, with and without ties."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} verdicts but {len(gold)} labels")
    n = len(gold)

    def rate(hits: list[bool]) -> float:
        return sum(hits) / len(hits) if hits else NAN

    untied = [(p, g) for p, g in zip(predicted, gold, strict=True) if g != "tie"]
    decided = [(p, g) for p, g in untied if p != "tie"]
    return Agreement(
        with_ties=rate([p == g for p, g in zip(predicted, gold, strict=True)]),
        without_ties=rate([p == g for p, g in untied]),
        decided=rate([p == g for p, g in decided]),
        n=n,
        n_without_ties=len(untied),
        n_decided=len(decided),
        judge_ties=rate([p == "tie" for p in predicted]),
        consistent=rate(list(consistent)) if consistent is not None else NAN,
    )


def confusion(predicted: Sequence[Vote], gold: Sequence[Vote]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {
        g: {p: 0 for p in ("first", "second", "tie")} for g in ("first", "second", "tie")
    }
    for p, g in zip(predicted, gold, strict=True):
        table[g][p] += 1
    return table


# --- running a judge over a set ----------------------------------------------------------------


@dataclass
class Scored:
    """One record's outcome: the result, or the error that stopped it."""

    id: str
    result: PointwiseResult | None
    error: str | None = None
    fresh: bool = True
    """Judged in this process (not taken from an earlier, interrupted run)."""


@dataclass
class Compared:
    id: str
    verdict: PairwiseVerdict | None
    error: str | None = None
    fresh: bool = True


Progress = Callable[[int, int], None]


class JudgedLog:
    """``judged.jsonl`` in the report folder: one line per finished record, so an
    interrupted evaluation resumes with the same configuration (``config.json``)."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "judged.jsonl"
        config_path = folder / "config.json"
        self.done: dict[str, dict[str, Any]] = {}
        same = config_path.exists() and json.loads(config_path.read_text()) == config
        if self.path.exists() and same:
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line
                if row.get("error") is None:
                    self.done[row["id"]] = row
        config_path.write_text(json.dumps(config, indent=2))
        with self.path.open("w") as fh:
            for row in self.done.values():
                fh.write(json.dumps(row) + "\n")
        self._fh = self.path.open("a")

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


async def score_items(
    client: LLMClient,
    cset: CriteriaSet,
    items: Sequence[HumanItem],
    opts: JudgeOptions,
    *,
    per_criterion: bool,
    log: JudgedLog | None = None,
    progress: Progress | None = None,
) -> list[Scored]:
    """Judge every item (concurrency bounded by the client); failures are recorded."""
    done = 0

    async def one(item: HumanItem) -> Scored:
        nonlocal done
        if log is not None and item.id in log.done:
            row = log.done[item.id]
            scored = Scored(item.id, PointwiseResult.model_validate(row["judge"]), fresh=False)
        else:
            try:
                judged = await score_record(
                    client,
                    cset,
                    item.fields,
                    opts,
                    per_criterion=per_criterion,
                    seed_parts=[item.id],
                )
                scored = Scored(item.id, judged.value)
            except LLMError as exc:
                scored = Scored(item.id, None, str(exc))
            if log is not None:
                log.write(_row(item, scored))
        done += 1
        if progress is not None:
            progress(done, len(items))
        return scored

    return list(await asyncio.gather(*(one(it) for it in items)))


def _row(item: HumanItem, scored: Scored) -> dict[str, Any]:
    return {
        "id": item.id,
        "doc": item.doc,
        "system": item.system,
        "human": item.human,
        "judge": scored.result.model_dump(mode="json") if scored.result else None,
        "error": scored.error,
    }


async def compare_pairs(
    client: LLMClient,
    cset: CriteriaSet,
    pairs: Sequence[HumanPair],
    opts: JudgeOptions,
    *,
    log: JudgedLog | None = None,
    progress: Progress | None = None,
) -> list[Compared]:
    done = 0

    async def one(pair: HumanPair) -> Compared:
        nonlocal done
        if log is not None and pair.id in log.done:
            verdict = PairwiseVerdict.model_validate(log.done[pair.id]["verdict"])
            out = Compared(pair.id, verdict, fresh=False)
        else:
            try:
                judged = await compare(
                    client, cset, pair.fields, pair.first, pair.second, opts, seed_parts=[pair.id]
                )
                out = Compared(pair.id, judged.value)
            except LLMError as exc:
                out = Compared(pair.id, None, str(exc))
            if log is not None:
                dumped = out.verdict.model_dump(mode="json") if out.verdict else None
                log.write(
                    {"id": pair.id, "label": pair.label, "verdict": dumped, "error": out.error}
                )
        done += 1
        if progress is not None:
            progress(done, len(pairs))
        return out

    return list(await asyncio.gather(*(one(p) for p in pairs)))


def pointwise_report(
    *,
    set_name: str,
    cset: CriteriaSet,
    model: str,
    items: Sequence[HumanItem],
    scored: Sequence[Scored],
    opts: JudgeOptions,
    per_criterion: bool,
    primary: str,
    seconds: float,
    concurrency: int,
    sample: str,
) -> PointwiseReport:
    """Correlations over the records the judge scored (failures left out and counted)."""
    ok = [(it, s.result) for it, s in zip(items, scored, strict=True) if s.result is not None]
    names = [c.name for c in cset.criteria]
    missing = [n for n in names if any(n not in it.human for it, _ in ok)]
    if missing:
        raise ValueError(f"human scores lack criteria {missing} (criteria set {cset.name!r})")
    judge = {n: [r.scores[n].score for _, r in ok] for n in names}
    human = {n: [it.human[n] for it, _ in ok] for n in names}
    levels, average = agreement_levels(
        judge, human, [it.doc for it, _ in ok], [it.system for it, _ in ok]
    )
    if primary not in levels:
        primary = "record"
    errors = [f"{s.id}: {s.error}" for s in scored if s.error is not None]
    return PointwiseReport(
        set=set_name,
        criteria=cset.name,
        criteria_version=cset.version,
        model=model,
        records=len(items),
        judged=len(ok),
        failed=len(items) - len(ok),
        method=dict(Counter(r.method for _, r in ok)),
        per_criterion=per_criterion,
        rationale_chars=opts.rationale_chars,
        logprobs=opts.logprobs,
        primary=primary,
        levels=levels,
        average=average,
        seconds=seconds,
        seconds_per_record=seconds / max(1, sum(s.fresh for s in scored)),
        resumed=sum(not s.fresh for s in scored),
        concurrency=concurrency,
        sample=sample,
        errors=errors[:10],
    )


def pairwise_report(
    *,
    set_name: str,
    cset: CriteriaSet,
    model: str,
    pairs: Sequence[HumanPair],
    compared: Sequence[Compared],
    opts: JudgeOptions,
    seconds: float,
    concurrency: int,
    sample: str,
) -> PairwiseReport:
    ok = [(p, c.verdict) for p, c in zip(pairs, compared, strict=True) if c.verdict is not None]
    predicted: list[Vote] = [v.winner for _, v in ok]
    gold: list[Vote] = [p.label for p, _ in ok]
    errors = [f"{c.id}: {c.error}" for c in compared if c.error is not None]
    return PairwiseReport(
        set=set_name,
        criteria=cset.name,
        criteria_version=cset.version,
        model=model,
        records=len(pairs),
        judged=len(ok),
        failed=len(pairs) - len(ok),
        rationale_chars=opts.rationale_chars,
        agreement=pairwise_agreement(predicted, gold, [v.consistent for _, v in ok]),
        confusion=confusion(predicted, gold),
        seconds=seconds,
        seconds_per_record=seconds / max(1, sum(c.fresh for c in compared)),
        resumed=sum(not c.fresh for c in compared),
        concurrency=concurrency,
        sample=sample,
        errors=errors[:10],
    )


class Timer:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self.start
