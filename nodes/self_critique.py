"""self_critique: improve the answer with feedback, applying it only where it fits.

``reference`` mode refines with the reference's distilled response guidance (no
new feedback call). ``sample`` mode, the paper's baseline, first asks for feedback
on this very sample (one feedback call per sample), then refines with it. On a
revision round the judge's notes are added to the guidance.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

import prompts
from nodes.llm import LLMError, client_for, derive_seed
from state.context import RefedContext
from state.graph_state import CandidateState
from state.llm_outputs import SampleFeedbackOut
from state.records import Usage

FEEDBACK_MAX_TOKENS = 300


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items if item.strip())


async def self_critique(state: CandidateState, runtime: Runtime[RefedContext]) -> dict[str, Any]:
    ctx = runtime.context
    llm = client_for(ctx)
    ref, inst = state.reference, state.instruction
    assert state.response is not None, "respond must run first"
    revising = state.judgement is not None
    usage = Usage()
    update: dict[str, Any] = {}

    if ctx.feedback_mode == "sample":
        notes = state.sample_feedback
        if notes is None:
            try:
                fb = await llm.structured(
                    prompts.load("sample_feedback").render(
                        new_instruction=inst.text, first_response=state.response
                    ),
                    SampleFeedbackOut,
                    task="sample_feedback",
                    feedback=True,
                    temperature=ctx.judge_temperature,
                    max_tokens=FEEDBACK_MAX_TOKENS,
                    seed=derive_seed(ctx.seed, ref.id, "sample_feedback", inst.index),
                )
            except LLMError as exc:
                return {"usage": exc.usage, "error": f"sample_feedback: {exc}"}
            usage += fb.usage
            notes = _bullets([fb.value.strengths, *fb.value.improvements])
            update["sample_feedback"] = notes
        guidance = notes
    else:
        assert state.feedback is not None, "reference mode needs the reference's feedback"
        guidance = _bullets(state.feedback.response_guidance)

    if revising and state.judge_notes:
        guidance += f"\n- An evaluator said: {state.judge_notes}"
    try:
        reply = await llm.text(
            prompts.load("refine").render(
                guidance=guidance, new_instruction=inst.text, draft=state.response
            ),
            task="refine",
            temperature=ctx.temperature,
            max_tokens=ctx.max_tokens,
            seed=derive_seed(ctx.seed, ref.id, "refine", inst.index, state.revisions + revising),
        )
    except LLMError as exc:
        return {**update, "usage": usage + exc.usage, "error": f"refine: {exc}"}
    update.update(usage=usage + reply.usage, response=reply.text)
    if revising:
        update["revisions"] = state.revisions + 1
    return update
