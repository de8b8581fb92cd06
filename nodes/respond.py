"""respond: a first answer to a new instruction, with the reference pair as the example.

The reference comes first in the prompt so the server's prefix cache shares it
across every sample of the reference.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

import prompts
from nodes.llm import LLMError, client_for, derive_seed
from state.context import RefedContext
from state.graph_state import CandidateState


async def respond(state: CandidateState, runtime: Runtime[RefedContext]) -> dict[str, Any]:
    ctx = runtime.context
    ref, inst = state.reference, state.instruction
    messages = prompts.load("respond").render(
        instruction=ref.instruction, response=ref.response, new_instruction=inst.text
    )
    try:
        reply = await client_for(ctx).text(
            messages,
            task="respond",
            temperature=ctx.temperature,
            max_tokens=ctx.max_tokens,
            seed=derive_seed(ctx.seed, ref.id, "respond", inst.index),
        )
    except LLMError as exc:
        return {"usage": exc.usage, "error": f"respond: {exc}"}
    return {"usage": reply.usage, "first_response": reply.text, "response": reply.text}
