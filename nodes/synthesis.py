"""synthesis: new instructions from the reference.

In ``reference`` mode, for each instruction feature the analysis found (subject
areas, skills), ask for new instructions that exercise it, guided by the distilled
instruction guidance; the reference's count is spread over its features. In
``sample`` and ``none`` modes there is no reference feedback, so new instructions
are asked for from the reference alone.

A call returns a list of instructions (``synthesis_mode = "list"``, JSON), or each of
``n`` completions of one request is one instruction (``"sampled"``: what a small model
manages). Drafts are deduplicated and, with ``checks`` on, screened by the validity
checks (:mod:`dataset.validity`); the ones dropped are kept on the thread with the
reason. ``synthesis_oversample`` drafts more than needed so that drops are replaced at
once; a top-up round asks for any shortfall.
"""

from __future__ import annotations

import asyncio
import math
import re
from itertools import zip_longest
from typing import Any

from langgraph.runtime import Runtime

import prompts
from dataset.validity import instruction_problem
from llm.client import LLMError, derive_seed
from llm.factory import client_for
from state.context import RefedContext
from state.graph_state import ReferenceState
from state.llm_outputs import InstructionsOut, OneInstructionOut
from state.records import DroppedInstruction, NewInstruction, Usage

MAX_PER_CALL = 10
"""The schema's list bound: one call asks for at most this many instructions."""
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


def _prompt_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


async def synthesis(state: ReferenceState, runtime: Runtime[RefedContext]) -> dict[str, Any]:
    ctx = runtime.context
    llm = client_for(ctx)
    ref = state.reference
    feedback = state.feedback if ctx.feedback_mode == "reference" else None
    features: list[str | None] = list(feedback.features()) if feedback else []
    guidance = "\n".join(f"- {g}" for g in feedback.instruction_guidance) if feedback else ""
    sampled = ctx.synthesis_mode == "sampled"
    temperature = (
        ctx.synthesis_temperature if ctx.synthesis_temperature is not None else ctx.temperature
    )

    async def ask(feature: str | None, count: int, round_: int, slot: int) -> tuple[Any, str]:
        seed = derive_seed(ctx.seed, ref.id, "synthesize", round_, slot)
        drafts = min(MAX_PER_CALL, math.ceil(count * ctx.synthesis_oversample))
        if feature is None:
            prompt = prompts.for_task("synthesize_plain", ctx.prompt_variants)
            messages = prompt.render(instruction=ref.instruction, count=drafts)
        else:
            prompt = prompts.for_task("synthesize_instructions", ctx.prompt_variants)
            messages = prompt.render(
                instruction=ref.instruction, guidance=guidance, count=drafts, feature=feature
            )
        fmt = prompt.format
        if sampled:
            many = await llm.structured_n(
                messages,
                OneInstructionOut,
                n=drafts,
                task="synthesize",
                temperature=temperature,
                max_tokens=ctx.synthesis_max_tokens,
                seed=seed,
                fmt=fmt,
                line_max_chars=ctx.line_max_chars,
                sampling=ctx.sampling(),
            )
            return (many.usage, [one.instruction for one in many.value]), _prompt_text(messages)
        listed = await llm.structured(
            messages,
            InstructionsOut,
            task="synthesize",
            temperature=temperature,
            max_tokens=ctx.synthesis_max_tokens * drafts + 32,
            seed=seed,
            fmt=fmt,
            line_max_chars=ctx.line_max_chars,
            sampling=ctx.sampling(),
        )
        texts = list(listed.value.instructions[:drafts])
        return (listed.usage, texts), _prompt_text(messages)

    usage = Usage()
    errors: list[str] = []
    seen = {_norm(ref.instruction)}
    kept: list[tuple[str, str | None]] = []
    dropped: list[DroppedInstruction] = []
    reference_text = f"{ref.instruction}\n{ref.response}"
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
        per_job: list[list[tuple[str, str | None]]] = []
        for (feature, _count), result in zip(jobs, results, strict=True):
            if isinstance(result, LLMError):
                usage += result.usage
                errors.append(str(result))
                continue
            if isinstance(result, BaseException):
                raise result
            (spent, texts), prompt_text = result
            usage += spent
            good: list[tuple[str, str | None]] = []
            for raw in texts:
                text, key = raw.strip(), _norm(raw)
                if not key or key in seen:
                    continue
                seen.add(key)
                problem = (
                    instruction_problem(
                        text,
                        prompt_text=prompt_text,
                        reference_text=reference_text,
                        feature=feature,
                    )
                    if ctx.checks
                    else None
                )
                if problem is not None:
                    dropped.append(DroppedInstruction(text=text, feature=feature, filter=problem))
                else:
                    good.append((text, feature))
            per_job.append(good)
        # Round-robin over the calls, so every feature is represented in what is kept.
        for row in zip_longest(*per_job):
            kept.extend(item for item in row if item is not None)
    kept = kept[:wanted]
    update: dict[str, Any] = {
        "usage": usage,
        "instructions": [
            NewInstruction(index=i, text=text, feature=feature)
            for i, (text, feature) in enumerate(kept)
        ],
        "dropped_instructions": dropped,
    }
    if not kept:
        reasons = errors + [f"{d.filter.name}: {d.text[:60]!r}" for d in dropped[:3]]
        update["error"] = "synthesis produced no new instruction" + (
            ": " + "; ".join(reasons) if reasons else ""
        )
    return update
