"""self_critique: improve the answer with feedback, applying it only where it fits.

``reference`` mode refines with the reference's distilled response guidance (no
new feedback call). ``sample`` mode, the paper's baseline, first asks for feedback
on this very sample (one feedback call per sample), then refines with it. On a
revision round the judge's notes are added to the guidance.

The refined answer is screened like the first one (:func:`dataset.answers.screen_answer`).
One that fails (cut off with nothing to keep, or a validity check) is not used: the
answer before it stands, and ``refine_dropped`` says why.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

import prompts
from dataset.answers import screen_answer
from llm.client import LLMError, derive_seed
from llm.factory import client_for
from state.context import RefedContext
from state.graph_state import CandidateState
from state.llm_outputs import SampleFeedbackOut
from state.records import Usage


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
            prompt = prompts.for_task("sample_feedback", ctx.prompt_variants)
            try:
                fb = await llm.structured(
                    prompt.render(new_instruction=inst.text, first_response=state.response),
                    SampleFeedbackOut,
                    task="sample_feedback",
                    feedback=True,
                    temperature=ctx.feedback_temperature,
                    max_tokens=ctx.feedback_max_tokens,
                    seed=derive_seed(ctx.seed, ref.id, "sample_feedback", inst.index),
                    fmt=prompt.format,
                    line_max_chars=ctx.line_max_chars,
                    sampling=ctx.sampling(),
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
            prompts.for_task("refine", ctx.prompt_variants).render(
                guidance=guidance, new_instruction=inst.text, draft=state.response
            ),
            task="refine",
            temperature=ctx.temperature,
            max_tokens=ctx.refine_max_tokens or ctx.max_tokens,
            seed=derive_seed(ctx.seed, ref.id, "refine", inst.index, state.revisions + revising),
            sampling=ctx.sampling(),
            allow_length=ctx.loop_rule == "cut",
        )
    except LLMError as exc:
        return {**update, "usage": usage + exc.usage, "error": f"refine: {exc}"}
    seen = await screen_answer(
        reply.text,
        reply.finish_reason,
        inst.text,
        checks=ctx.checks,
        loop_rule=ctx.loop_rule,
        relevance_min=ctx.relevance_min,
        before=state.response,
    )
    update["usage"] = usage + reply.usage
    if seen.problem is not None:
        update["refine_dropped"] = f"refine: {seen.problem.name} ({seen.problem.method})"
    elif seen.error is not None:
        update["refine_dropped"] = f"refine: {seen.error}"
    else:
        update.update(response=seen.text, cut=seen.cut, refine_dropped=None)
    if revising:
        update["revisions"] = state.revisions + 1
    return update
