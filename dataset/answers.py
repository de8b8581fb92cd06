"""What happens to an answer between the LLM and the judge: a cut-off answer is cut back
to its last complete sentence (or dropped), then the validity checks and, when set, the
relevance check look at it.

This module may import ``state`` and this package only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from dataset.relevance import off_topic
from dataset.validity import answer_problem, cut_answer, replies_to_feedback
from state.records import QualityFilter


@dataclass(frozen=True)
class Screened:
    text: str
    cut: Literal["loop", "cap"] | None = None
    problem: QualityFilter | None = None
    error: str | None = None
    """The answer is unusable as it came (cut off with nothing to keep, under ``fail``)."""


_REVISION_NOTE = re.compile(
    r"^(?:[^\n]{0,60}?\bhere(?:'s|\u2019s| is| are)\b[^\n]{0,40}?"
    r"\b(?:revised|improved|updated|rewritten|refined|edited|better|new|more detailed|expanded"
    r"|clearer|polished|alternative|another)\b[^\n]{0,80}?:\s*\n\s*){1,3}",
    re.IGNORECASE,
)
"""The first lines that announce a rewrite, up to three as a note may follow a note ("Here's a
revised version of the advice:", "Great! Here is a more detailed response:", "To address the
question more accurately, here's an alternative response:")."""


def without_revision_note(text: str) -> str:
    """A refined answer without the line announcing it, which is not part of the answer."""
    return _REVISION_NOTE.sub("", text.lstrip(), count=1) or text


async def screen_answer(
    text: str,
    finish_reason: str | None,
    request: str,
    *,
    checks: bool,
    loop_rule: str,
    relevance_min: float | None,
    before: str | None = None,
) -> Screened:
    """The answer as the judge will see it, or why it will not be judged. A refinement
    (``before``: the answer it rewrote) loses a first line that only announces the rewrite,
    unless that line replies to the feedback ("That's correct! Here's another version:"),
    which fails it; with the relevance check it must not drift further from the request than
    that answer."""
    cut: Literal["loop", "cap"] | None = None
    if before is not None:
        leftover = replies_to_feedback(text) if checks else None
        text = without_revision_note(text)
        if leftover is not None:
            return Screened(text, problem=leftover)
    if finish_reason == "length":
        kept = cut_answer(text) if loop_rule == "cut" else None
        if kept is None:
            return Screened(text, error="length: answer cut off at max_tokens")
        text, cut = kept[0], kept[1]
    if not checks:
        return Screened(text, cut)
    problem = answer_problem(text, request)
    if problem is None and relevance_min is not None:
        problem = await off_topic(request, text, relevance_min, before)
    return Screened(text, cut, problem)
