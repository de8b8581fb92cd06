"""synthesis: new instructions from the reference.

In ``reference`` mode, for each instruction feature the analysis found (subject
areas, skills), ask for new instructions that exercise it, guided by the distilled
instruction guidance; the reference's count is spread over its features. In
``sample`` and ``none`` modes there is no reference feedback, so new instructions
are asked for from the reference alone.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from langgraph.runtime import Runtime

import prompts
from nodes.llm import LLMError, client_for, derive_seed
from state.context import RefedContext
from state.graph_state import ReferenceState
from state.llm_outputs import InstructionsOut
from state.records import NewInstruction, Usage

MAX_PER_CALL = 10
"""The schema's list bound: one call asks for at most this many instructions."""
TOKENS_PER_INSTRUCTION = 160
TOP_UP_ROUNDS = 1
"""Extra rounds asking for the shortfall when calls returned fewer than asked."""


def plan_calls(
    features: list[str | None], total: int, start: int = 0
) -> list[tuple[str | None, int]]:
    """Spread ``total`` evenly over features, from ``features[start]`` on (wrapping round),
    at most MAX_PER_CALL per call. Features after the first ``total`` get nothing."""
    if not features:
        features = [None]
    start %= len(features)
    features = features[start:] + features[:start]
    shares = [
        total // len(features) + (1 if i < total % len(features) else 0)
        for i in range(len(features))
    ]
    jobs: list[tuple[str | None, int]] = []
    for feature, share in zip(features, shares, strict=True):
        while share > 0:
            jobs.append((feature, min(share, MAX_PER_CALL)))
            share -= MAX_PER_CALL
    return jobs


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


async def synthesis(state: ReferenceState, runtime: Runtime[RefedContext]) -> dict[str, Any]:
    ctx = runtime.context
    llm = client_for(ctx)
    ref = state.reference
    feedback = state.feedback if ctx.feedback_mode == "reference" else None
    features: list[str | None] = list(feedback.features()) if feedback else []
    guidance = "\n".join(f"- {g}" for g in feedback.instruction_guidance) if feedback else ""

    async def ask(feature: str | None, count: int, round_: int, slot: int) -> Any:
        if feature is None:
            messages = prompts.load("synthesize_plain").render(
                instruction=ref.instruction, count=count
            )
        else:
            messages = prompts.load("synthesize_instructions").render(
                instruction=ref.instruction, guidance=guidance, count=count, feature=feature
            )
        return await llm.structured(
            messages,
            InstructionsOut,
            task="synthesize",
            temperature=ctx.temperature,
            max_tokens=TOKENS_PER_INSTRUCTION * count + 32,
            seed=derive_seed(ctx.seed, ref.id, "synthesize", round_, slot),
        )

    usage = Usage()
    errors: list[str] = []
    seen = {_norm(ref.instruction)}
    kept: list[tuple[str, str | None]] = []
    wanted = ctx.per_reference
    start = 0  # a top-up round starts at the features the first round left out
    for round_ in range(1 + TOP_UP_ROUNDS):
        missing = wanted - len(kept)
        if missing <= 0:
            break
        jobs = plan_calls(features, missing, start)
        start += len(jobs)
        results = await asyncio.gather(
            *(ask(f, n, round_, i) for i, (f, n) in enumerate(jobs)), return_exceptions=True
        )
        for (feature, count), result in zip(jobs, results, strict=True):
            if isinstance(result, LLMError):
                usage += result.usage
                errors.append(str(result))
                continue
            if isinstance(result, BaseException):
                raise result
            usage += result.usage
            for text in result.value.instructions[:count]:
                key = _norm(text)
                if key and key not in seen:
                    seen.add(key)
                    kept.append((text.strip(), feature))
    kept = kept[:wanted]
    update: dict[str, Any] = {
        "usage": usage,
        "instructions": [
            NewInstruction(index=i, text=text, feature=feature)
            for i, (text, feature) in enumerate(kept)
        ],
    }
    if not kept:
        update["error"] = "synthesis produced no new instruction" + (
            ": " + "; ".join(errors) if errors else ""
        )
    return update
