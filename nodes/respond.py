"""respond: a first answer to a new instruction, with the reference pair as the example.

The reference comes first in the prompt so the server's prefix cache shares it
across every sample of the reference. The answer is then screened before any judge
sees it (:func:`dataset.answers.screen_answer`): one cut off at its token cap is cut
back to its last complete sentence (``loop_rule = "cut"``), and one that fails a
validity check closes the candidate as rejected.
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
from state.records import Usage


async def respond(state: CandidateState, runtime: Runtime[RefedContext]) -> dict[str, Any]:
    ctx = runtime.context
    ref, inst = state.reference, state.instruction
    messages = prompts.for_task("respond", ctx.prompt_variants).render(
        instruction=ref.instruction, response=ref.response, new_instruction=inst.text
    )
    try:
        reply = await client_for(ctx).text(
            messages,
            task="respond",
            temperature=ctx.temperature,
            max_tokens=ctx.respond_max_tokens or ctx.max_tokens,
            seed=derive_seed(ctx.seed, ref.id, "respond", inst.index),
            sampling=ctx.sampling(),
            allow_length=ctx.loop_rule == "cut",
        )
    except LLMError as exc:
        return {"usage": exc.usage, "error": f"respond: {exc}"}
    seen = await screen_answer(
        reply.text,
        reply.finish_reason,
        inst.text,
        checks=ctx.checks,
        loop_rule=ctx.loop_rule,
        relevance_min=ctx.relevance_min,
    )
    if seen.error is not None:  # an answer that came, but cannot be used: a failed call
        return {"usage": reply.usage + Usage(failed_calls=1), "error": f"respond: {seen.error}"}
    return {
        "usage": reply.usage,
        "first_response": seen.text,
        "response": seen.text,
        "cut": seen.cut,
        "rejection": seen.problem,
    }
