"""metric_judge: score the current answer per criterion, told the task in plain words.

The verdict decides acceptance (mean score against the bar) and, under the bar,
whether another revision round runs.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

import prompts
from nodes.llm import LLMError, client_for, derive_seed
from state.context import RefedContext
from state.graph_state import CandidateState
from state.llm_outputs import JUDGE_CRITERIA, JudgeOut
from state.records import Judgement

JUDGE_MAX_TOKENS = 400


async def metric_judge(state: CandidateState, runtime: Runtime[RefedContext]) -> dict[str, Any]:
    ctx = runtime.context
    ref, inst = state.reference, state.instruction
    assert state.response is not None, "respond must run first"
    try:
        reply = await client_for(ctx).structured(
            prompts.load("judge").render(new_instruction=inst.text, response=state.response),
            JudgeOut,
            task="judge",
            temperature=ctx.judge_temperature,
            max_tokens=JUDGE_MAX_TOKENS,
            seed=derive_seed(ctx.seed, ref.id, "judge", inst.index, state.revisions),
        )
    except LLMError as exc:
        return {"usage": exc.usage, "error": f"metric_judge: {exc}"}
    out = reply.value
    scores = {name: float(getattr(out, name)) for name in JUDGE_CRITERIA}
    mean = sum(scores.values()) / len(scores)
    judgement = Judgement(
        scores=scores,
        rationale=out.rationale,
        mean=mean,
        method="sampled",
        passed=mean >= ctx.judge_bar,
    )
    return {"usage": reply.usage, "judgement": judgement, "judge_notes": out.rationale}


def wants_revision(state: CandidateState, ctx: RefedContext) -> bool:
    """Under the bar with rounds left (never in ``none`` mode: that would be feedback)."""
    j = state.judgement
    return (
        j is not None
        and not j.passed
        and ctx.feedback_mode != "none"
        and state.revisions < ctx.max_revisions
    )
