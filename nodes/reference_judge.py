"""reference_judge: the judge's score of the reference pair itself.

With an anchored bar (``judge_bar = "reference[:MARGIN]"``) a candidate passes when its
mean comes within MARGIN of its own reference's. The references are the method's
standard of quality, so this bar means the same whatever the judge's habits of scale:
a 135M judge that gives everything 1.2 and a large one that gives good answers 4.5.

One judge call per reference: beside the analysis calls in ``reference`` mode, else before
anything else of the reference; the score is kept on the thread and with the reference's
feedback (so the service's feedback cache
and a resumed run reuse it). A reference whose own score cannot be had fails, like one
whose analysis fails.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

import prompts
from llm.client import LLMError
from nodes.metric_judge import judge_scores, judgement_of, pipeline_record
from state.context import RefedContext
from state.criteria import CriteriaError
from state.graph_state import ReferenceState
from state.judgements import JudgeBar
from state.records import Reference


async def judge_reference(ctx: RefedContext, ref: Reference) -> dict[str, Any]:
    """The partial update scoring ``ref`` itself: ``reference_judgement``, or ``error``.
    (reference_analysis calls it beside its own calls, to save a round trip.)"""
    try:
        cset = prompts.criteria(ctx.judge_criteria)
        record = pipeline_record(cset, ref.instruction, ref.response, ref.instruction, ref.response)
        judged = await judge_scores(ctx, cset, record, (ref.id, "reference"))
    except CriteriaError as exc:
        return {"error": f"reference_judge: config: {exc}"}
    except LLMError as exc:
        return {"usage": exc.usage, "error": f"reference_judge: {exc}"}
    return {
        "usage": judged.usage,
        "reference_judgement": judgement_of(judged.value, cset, passed=True),
    }


def needs_reference_score(state: ReferenceState, ctx: RefedContext) -> bool:
    """An anchored bar, and no score of the reference yet (on the thread or cached)."""
    cached = state.feedback is not None and state.feedback.reference_judgement is not None
    anchored = JudgeBar.parse(ctx.judge_bar).anchored
    return anchored and state.reference_judgement is None and not cached


async def reference_judge(state: ReferenceState, runtime: Runtime[RefedContext]) -> dict[str, Any]:
    if state.reference_judgement is not None:
        return {}
    cached = state.feedback.reference_judgement if state.feedback is not None else None
    if cached is not None:
        return {"reference_judgement": cached}
    return await judge_reference(runtime.context, state.reference)
