"""Agreement with people, per criterion, for the trained metric and its baselines.

For a pointwise set (ratings) each method's scores are compared with the averaged human
ratings by ``graph.judge_eval`` (Spearman and Kendall tau-b at record, document and system
level; the set's primary level is the headline, as ``judge eval`` reports it), and by
pairwise accuracy: over every two texts of one source (article, conversation, dialogue act)
whose averaged ratings differ, how often the method orders them as people do (a tie in the
method's scores counts one half). For a pairwise set (Auto-J) it is the agreement with the
human preference on pairs people did not call a tie.

Baselines computed in the same run:

- ``rouge_l``: ROUGE-L F1 (graph.quality) of the judged text against the set's human
  references (the best over several), where the set has references (SummEval, SF);
- ``cosine``: cosine similarity of the untrained all-MiniLM-L6-v2's mean-pooled embeddings of
  the judged text and the references (the best over several), same sets;
- ``untrained``: the cross-encoder before training (the base with a new, seeded head);
- ``llm``: Refed's LLM judge (``nodes.judging``) on the embedded model, on a deterministic
  slice of the test set, or the records the ``judge eval`` run already scored.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dataset.quality.rouge import rouge_l
from dataset.quality.text import tokens
from judge.evaluate import agreement_levels, pairwise_agreement
from judge.sets import HumanSet, read_records
from metric.data import Example, Pair
from state.judgements import Vote

NAN = float("nan")


@dataclass
class Row:
    """One method's agreement with people on one (set, criterion)."""

    setting: str
    """single, multi, loto, or the baseline's name."""
    task: str
    set: str
    criterion: str
    level: str
    spearman: float
    kendall: float
    pair_accuracy: float
    n: int
    n_pairs: int
    note: str = ""
    base: str = ""
    """The base model of a trained setting (empty for the baselines that have none)."""
    seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def concordance(
    scores: Sequence[float], human: Sequence[float], groups: Sequence[str]
) -> tuple[float, int]:
    """Pairwise accuracy within groups over pairs whose human ratings differ."""
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by_group[g].append(i)
    hits = 0.0
    n = 0
    for idx in by_group.values():
        for a_pos, a in enumerate(idx):
            for b in idx[a_pos + 1 :]:
                dh = round(human[a] - human[b], 9)
                if dh == 0:
                    continue
                ds = scores[a] - scores[b]
                n += 1
                hits += 0.5 if ds == 0 else float((ds > 0) == (dh > 0))
    return (hits / n if n else NAN), n


def pointwise_rows(
    setting: str,
    examples: Sequence[Example],
    scores: dict[str, float],
    *,
    primary: str = "record",
    note: str = "",
) -> list[Row]:
    """Rows per (set, criterion) over the examples that have a score."""
    keyed: dict[tuple[str, str, str], list[Example]] = defaultdict(list)
    for ex in examples:
        if ex.rating is not None and ex.uid in scores:
            keyed[(ex.task, ex.set, ex.criterion)].append(ex)
    rows = []
    for (task, set_name, criterion), exs in sorted(keyed.items()):
        judge = [scores[e.uid] for e in exs]
        human = [float(e.rating) for e in exs if e.rating is not None]
        levels, _ = agreement_levels(
            {criterion: judge}, {criterion: human}, [e.doc for e in exs], [e.system for e in exs]
        )
        level = primary if primary in levels else "record"
        corr = levels[level][criterion]
        acc, n_pairs = concordance(judge, human, [e.group for e in exs])
        rows.append(
            Row(
                setting,
                task,
                set_name,
                criterion,
                level,
                corr.spearman,
                corr.kendall,
                acc,
                len(exs),
                n_pairs,
                note,
            )
        )
    return rows


def vote(first: float, second: float) -> Vote:
    if first > second:
        return "first"
    if second > first:
        return "second"
    return "tie"


def pair_rows(
    setting: str, pairs: Sequence[Pair], scores: dict[str, float], *, note: str = ""
) -> list[Row]:
    """Agreement with human preferences (ties people made are left out)."""
    keyed: dict[tuple[str, str, str], list[Pair]] = defaultdict(list)
    for p in pairs:
        if p.first in scores and p.second in scores:
            keyed[(p.task, p.set, p.criterion)].append(p)
    rows = []
    for (task, set_name, criterion), ps in sorted(keyed.items()):
        predicted = [vote(scores[p.first], scores[p.second]) for p in ps]
        agreement = pairwise_agreement(predicted, [p.label for p in ps])
        # A tie in the model's scores counts one half, as for pointwise sets.
        untied = [(v, p.label) for v, p in zip(predicted, ps, strict=True) if p.label != "tie"]
        hits = sum(0.5 if v == "tie" else float(v == g) for v, g in untied)
        acc = hits / len(untied) if untied else NAN
        rows.append(
            Row(
                setting,
                task,
                set_name,
                criterion,
                "pair",
                NAN,
                NAN,
                acc,
                agreement.n,
                agreement.n_without_ties,
                note,
            )
        )
    return rows


def llm_pair_rows(pairs: Sequence[Pair], votes: dict[int, Vote], *, note: str = "") -> list[Row]:
    """The LLM judge's verdicts (by pair index) scored like ``pair_rows``."""
    chosen = [(p, votes[i]) for i, p in enumerate(pairs) if i in votes]
    if not chosen:
        return []
    p0 = chosen[0][0]
    agreement = pairwise_agreement([v for _, v in chosen], [p.label for p, _ in chosen])
    untied = [(v, p.label) for p, v in chosen if p.label != "tie"]
    hits = sum(0.5 if v == "tie" else float(v == g) for v, g in untied)
    return [
        Row(
            "llm",
            p0.task,
            p0.set,
            p0.criterion,
            "pair",
            NAN,
            NAN,
            hits / len(untied) if untied else NAN,
            agreement.n,
            agreement.n_without_ties,
            note,
        )
    ]


# --- reference-based baselines ---------------------------------------------------------------

REFERENCE_KEYS = {"summeval": "ref_summs", "sfres": "reference", "sfhot": "reference"}
"""Where a built-in set keeps its human reference texts."""


def _record_id(hset: HumanSet, record: dict[str, Any], n: int) -> str:
    """The id ``graph.judge_sets.load_items`` gives record ``n``."""
    if hset.id_key and hset.id_key in record:
        return f"{hset.name}:{record[hset.id_key]}"
    return f"{hset.name}:{n}"


def references(hset: HumanSet, key: str | None = None) -> dict[str, list[str]]:
    """Item id -> its reference texts (empty when the set has none)."""
    key = key or REFERENCE_KEYS.get(hset.name)
    if key is None:
        return {}
    out: dict[str, list[str]] = {}
    for n, record in enumerate(read_records(hset.path)):
        value = record.get(key)
        if value is None:
            continue
        refs = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        out[_record_id(hset, record, n)] = [r for r in refs if r.strip()]
    return out


def rouge_scores(examples: Iterable[Example], refs: dict[str, list[str]]) -> dict[str, float]:
    """Best ROUGE-L F1 of each example's judged text against its item's references."""
    out: dict[str, float] = {}
    for ex in examples:
        rs = refs.get(ex.item)
        if rs:
            mine = tokens(ex.target)
            out[ex.uid] = max(rouge_l(mine, tokens(r)) for r in rs)
    return out


def cosine_scores(
    examples: Sequence[Example], refs: dict[str, list[str]], embed: Any
) -> dict[str, float]:
    """Best cosine of the judged text's embedding with its references' (``embed``: texts ->
    unit vectors, a ``torch.Tensor`` [n, d])."""
    wanted = [ex for ex in examples if refs.get(ex.item)]
    texts = sorted({ex.target for ex in wanted} | {r for ex in wanted for r in refs[ex.item]})
    if not texts:
        return {}
    vectors = embed(texts)
    where = {t: i for i, t in enumerate(texts)}
    out: dict[str, float] = {}
    for ex in wanted:
        v = vectors[where[ex.target]]
        out[ex.uid] = max(float(v @ vectors[where[r]]) for r in refs[ex.item])
    return out
