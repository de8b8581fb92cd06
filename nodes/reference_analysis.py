"""reference_analysis: what makes the reference's instruction and response good.

Two feedback calls, made once per reference and run concurrently: one on the
instruction (subject areas, skills, clarity), one on the response (content,
communication, alignment, improvements). With a bar anchored on the reference, the
judge's score of the reference pair is asked for at the same time.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langgraph.runtime import Runtime

import prompts
from llm.client import LLMError, derive_seed
from llm.factory import client_for
from nodes.reference_judge import judge_reference, needs_reference_score
from state.context import RefedContext
from state.graph_state import ReferenceState
from state.llm_outputs import InstructionAnalysisOut, ResponseAnalysisOut
from state.records import InstructionAnalysis, ResponseAnalysis, Usage


async def _nothing() -> dict[str, Any]:
    return {}


async def reference_analysis(
    state: ReferenceState, runtime: Runtime[RefedContext]
) -> dict[str, Any]:
    ctx = runtime.context
    llm = client_for(ctx)
    ref = state.reference
    about_instruction = prompts.for_task("analyze_instruction", ctx.prompt_variants)
    about_response = prompts.for_task("analyze_response", ctx.prompt_variants)
    common: dict[str, Any] = {
        "feedback": True,
        "temperature": ctx.feedback_temperature,
        "max_tokens": ctx.analysis_max_tokens,
        "sampling": ctx.sampling(),
    }
    scoring = needs_reference_score(state, ctx)
    scored, *calls = await asyncio.gather(
        judge_reference(ctx, ref) if scoring else _nothing(),
        llm.structured(
            about_instruction.render(instruction=ref.instruction),
            InstructionAnalysisOut,
            task="analyze_instruction",
            seed=derive_seed(ctx.seed, ref.id, "analyze_instruction"),
            fmt=about_instruction.format,
            line_max_chars=ctx.line_max_chars,
            **common,
        ),
        llm.structured(
            about_response.render(instruction=ref.instruction, response=ref.response),
            ResponseAnalysisOut,
            task="analyze_response",
            seed=derive_seed(ctx.seed, ref.id, "analyze_response"),
            fmt=about_response.format,
            line_max_chars=ctx.line_max_chars,
            **common,
        ),
        return_exceptions=True,
    )
    if isinstance(scored, BaseException):
        raise scored
    usage = Usage.model_validate(scored.get("usage") or {})
    errors: list[str] = [scored["error"]] if scored.get("error") else []
    for result in calls:
        if isinstance(result, LLMError):
            usage += result.usage
            errors.append(str(result))
        elif isinstance(result, BaseException):
            raise result
        else:
            usage += result.usage
    if errors:
        return {"usage": usage, "error": "reference_analysis failed: " + "; ".join(errors)}
    inst, resp = calls
    assert not isinstance(inst, BaseException) and not isinstance(resp, BaseException)
    return {
        **({"reference_judgement": scored["reference_judgement"]} if scoring else {}),
        "usage": usage,
        "instruction_analysis": InstructionAnalysis(**inst.value.model_dump()),
        "response_analysis": ResponseAnalysis(**resp.value.model_dump()),
    }
