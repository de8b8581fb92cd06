"""HEAP-style training records for a judge model, built from human-judgement files.

Two kinds, both in the chat format the judge is asked in (so a model fine-tuned on them
answers Refed's own judge prompts, score only):

- ``pointwise``: one record per (text, criterion): the pointwise prompt, and as the
  answer the averaged human score rounded to the criterion's scale;
- ``pair``: good-vs-bad pairs from averaged ratings: two texts for the same source
  (same document / conversation, identical other fields) whose human scores on a
  criterion differ by at least ``min_gap``; the pairwise prompt with the better text
  shown as A or B (a seeded coin), and the answer naming it. ``chosen`` / ``rejected``
  hold the texts for preference training. Pairwise human sets give pairs from their
  labels (ties left out).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from judge.scoring import JudgeOptions, render_pairwise, render_pointwise
from judge.sets import HumanItem, HumanPair
from state.criteria import CriteriaSet, Criterion

SCORE_ONLY = JudgeOptions(rationale_chars=0)


def to_scale(value: float, c: Criterion) -> int:
    """The nearest point on the criterion's scale (halves round up)."""
    lo, hi = c.scale
    return min(hi, max(lo, math.floor(value + 0.5)))


def _coin(seed: int, *parts: object) -> bool:
    text = "\x00".join(str(p) for p in (seed, *parts))
    return hashlib.sha256(text.encode()).digest()[0] % 2 == 0


def _answer(value: dict[str, Any]) -> dict[str, str]:
    return {"role": "assistant", "content": json.dumps(value)}


def pointwise_records(
    set_name: str, cset: CriteriaSet, items: Sequence[HumanItem]
) -> Iterator[dict[str, Any]]:
    for item in items:
        for c in cset.criteria:
            if c.name not in item.human:
                continue
            target = to_scale(item.human[c.name], c)
            messages = render_pointwise(cset, (c,), item.fields, SCORE_ONLY)
            yield {
                "id": f"{item.id}:{c.name}",
                "kind": "pointwise",
                "set": set_name,
                "criteria": cset.name,
                "criterion": c.name,
                "messages": [*messages, _answer({"score": target})],
                "target": target,
                "human": item.human[c.name],
            }


def _pair_record(
    *,
    rid: str,
    set_name: str,
    cset: CriteriaSet,
    criteria: Sequence[Criterion],
    context: dict[str, str],
    good: str,
    bad: str,
    seed: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    good_first = _coin(seed, rid)
    a, b = (good, bad) if good_first else (bad, good)
    messages = render_pairwise(cset, criteria, context, a, b, SCORE_ONLY)
    return {
        "id": rid,
        "kind": "pair",
        "set": set_name,
        "criteria": cset.name,
        "criterion": criteria[0].name if len(criteria) == 1 else None,
        "messages": [*messages, _answer({"winner": "A" if good_first else "B"})],
        "chosen": good,
        "rejected": bad,
        **extra,
    }


def pair_records(
    set_name: str,
    cset: CriteriaSet,
    items: Sequence[HumanItem],
    *,
    min_gap: float = 1.0,
    max_per_group: int | None = None,
    seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """Good-vs-bad pairs within each document, per criterion, from averaged ratings."""
    groups: dict[str, list[HumanItem]] = defaultdict(list)
    for item in items:
        if item.doc is not None:
            groups[item.doc].append(item)
    target = cset.target
    for doc, members in groups.items():
        for c in cset.criteria:
            made = 0
            for x, y in itertools.combinations(members, 2):
                if max_per_group is not None and made >= max_per_group:
                    break
                if c.name not in x.human or c.name not in y.human:
                    continue
                context = {k: v for k, v in x.fields.items() if k != target}
                if context != {k: v for k, v in y.fields.items() if k != target}:
                    continue
                gap = x.human[c.name] - y.human[c.name]
                if abs(gap) < min_gap or x.fields[target] == y.fields[target]:
                    continue
                good, bad = (x, y) if gap > 0 else (y, x)
                made += 1
                yield _pair_record(
                    rid=f"{good.id}>{bad.id}:{c.name}",
                    set_name=set_name,
                    cset=cset,
                    criteria=(c,),
                    context=context,
                    good=good.fields[target],
                    bad=bad.fields[target],
                    seed=seed,
                    extra={
                        "doc": doc,
                        "gap": abs(gap),
                        "human": [good.human[c.name], bad.human[c.name]],
                    },
                )


def labelled_pair_records(
    set_name: str, cset: CriteriaSet, pairs: Sequence[HumanPair], *, seed: int = 0
) -> Iterator[dict[str, Any]]:
    """Pairs from a pairwise human set (the preferred text is the good one; ties skipped)."""
    for p in pairs:
        if p.label == "tie":
            continue
        good, bad = (p.first, p.second) if p.label == "first" else (p.second, p.first)
        yield _pair_record(
            rid=p.id,
            set_name=set_name,
            cset=cset,
            criteria=cset.criteria,
            context=p.fields,
            good=good,
            bad=bad,
            seed=seed,
            extra={"group": p.group},
        )
