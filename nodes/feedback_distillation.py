"""feedback_distillation: turn the reference's analysis into transferable guidance.

One feedback call per reference. The result (``ReferenceFeedback``) is what every
sample of this reference is synthesized and refined with.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

import prompts
from llm.client import LLMError, derive_seed
from llm.factory import client_for
from state.context import RefedContext
from state.graph_state import ReferenceState
from state.llm_outputs import DistilledFeedbackOut
from state.records import ReferenceFeedback


async def feedback_distillation(
    state: ReferenceState, runtime: Runtime[RefedContext]
) -> dict[str, Any]:
    ctx = runtime.context
    ref = state.reference
    inst, resp = state.instruction_analysis, state.response_analysis
    assert inst is not None and resp is not None, "reference_analysis must run first"
    prompt = prompts.for_task("distill_feedback", ctx.prompt_variants)
    messages = prompt.render(
        instruction=ref.instruction,
        subject_areas="; ".join(inst.subject_areas),
        skills="; ".join(inst.skills),
        clarity=inst.clarity,
        content=resp.content,
        communication=resp.communication,
        alignment=resp.alignment,
        improvements="; ".join(resp.improvements),
    )
    try:
        reply = await client_for(ctx).structured(
            messages,
            DistilledFeedbackOut,
            task="distill_feedback",
            feedback=True,
            temperature=ctx.feedback_temperature,
            max_tokens=ctx.distill_max_tokens,
            seed=derive_seed(ctx.seed, ref.id, "distill_feedback"),
            fmt=prompt.format,
            line_max_chars=ctx.line_max_chars,
            sampling=ctx.sampling(),
        )
    except LLMError as exc:
        return {"usage": exc.usage, "error": f"feedback_distillation failed: {exc}"}
    feedback = ReferenceFeedback(
        reference_id=ref.id,
        instruction=inst,
        response=resp,
        instruction_guidance=list(reply.value.instruction_guidance),
        response_guidance=list(reply.value.response_guidance),
        reference_judgement=state.reference_judgement,
        usage=state.usage + reply.usage,
    )
    return {"usage": reply.usage, "feedback": feedback}
