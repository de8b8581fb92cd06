"""Examples under the pipeline's own criteria set (``instruction``), where Refed's judge works.

- Training material (``negatives_examples``): requests from Auto-J's *training* split, each
  with the answer people preferred (taken as 4 of 5) and three bad answers made from the data
  (``metric.junk.negatives``: another request's answer, a loop, an ask-back; taken as 1 of 5),
  on every criterion of the set. Good-vs-bad pairs come from these ratings like any rated set.
- Evaluation (``junk_examples``): the items of a junk set (``metric.junk.junk_set``, LIMA),
  on every criterion, read with the generic instruction as the pipeline asks.
"""

from __future__ import annotations

from collections.abc import Sequence

import prompts
from metric.data import GENERIC, Example, TaskData, context_fields, instruction, unit
from metric.junk import JunkItem, negatives
from state.criteria import CriteriaSet

TASK = "instruction"
GOOD, BAD = 4.0, 1.0
"""Ratings given to a preferred answer and to a made-up bad one (on a 1-5 scale)."""


def pipeline_criteria() -> CriteriaSet:
    return prompts.criteria("instruction")


def _examples(
    cset: CriteriaSet,
    item: str,
    group: str,
    request: str,
    answer: str,
    rating: float | None,
    set_name: str,
) -> list[Example]:
    record = {"instruction": request, "response": answer}
    return [
        Example(
            uid=f"{item}|{c.name}",
            task=TASK,
            set=set_name,
            criterion=c.name,
            group=group,
            item=item,
            instruction=instruction(GENERIC, cset, c),
            context=context_fields(cset, c, record),
            target=answer,
            scale=c.scale,
            target_label=cset.fields[cset.target],
            rating=None if rating is None else min(max(rating, c.scale[0]), c.scale[1]),
        )
        for c in cset.criteria
    ]


def negatives_examples(preference: TaskData, n: int, *, seed: int = 0) -> list[Example]:
    """Up to ``n`` training requests of Auto-J (whole sources, seeded), each with its preferred
    answer and three made-up bad ones, on every criterion of the pipeline's set."""
    cset = pipeline_criteria()
    chosen: dict[str, tuple[str, str]] = {}
    for p in sorted(preference.split_pairs("train"), key=lambda p: unit(seed, "neg", p.first)):
        if p.label == "tie" or p.group in chosen:
            continue
        first = preference.examples[p.first]
        good = first if p.label == "first" else preference.examples[p.second]
        request = next((f.text for f in first.context), "")
        if request.strip() and good.target.strip():
            chosen[p.group] = (request, good.target)
        if len(chosen) >= n:
            break
    groups = list(chosen)
    pairs = [chosen[g] for g in groups]
    out: list[Example] = []
    for i, (request, answer) in enumerate(pairs):
        group = f"negatives:{groups[i]}"
        out += _examples(cset, f"{group}:good", group, request, answer, GOOD, "negatives")
    for i, text, kind in negatives(pairs, seed=seed) if len(pairs) > 1 else []:
        group = f"negatives:{groups[i]}"
        out += _examples(cset, f"{group}:{kind}", group, pairs[i][0], text, BAD, "negatives")
    return out


def junk_examples(items: Sequence[JunkItem]) -> list[Example]:
    """The junk set's items on every criterion of the pipeline's set (no rating)."""
    cset = pipeline_criteria()
    out: list[Example] = []
    for n, it in enumerate(items):
        out += _examples(
            cset, f"junk:{n}", f"junk:{it.source}", it.instruction, it.response, None, "junk"
        )
    return out
