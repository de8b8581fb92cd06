"""metric_judge: score the current answer on the criteria set, told the task in plain words.

By default one call scores every criterion (``judge_per_criterion`` makes it one call
each); with log-probabilities (``judge_logprobs``) each score is the expectation over
the scale. The mean against the bar decides acceptance and, under the bar, whether
another revision round runs. With ``pairwise_filter`` (the paper's filter) a sample
that clears the bar must also have its improved response beat the first one, asked
in both orders (two more calls); that verdict is kept on the judgement.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

import prompts
from nodes.judging import JudgeOptions, compare, score_record
from nodes.llm import LLMError, judge_client_for
from state.context import RefedContext
from state.criteria import CriteriaError, CriteriaSet
from state.graph_state import CandidateState
from state.records import Judgement, Usage

PIPELINE_FIELDS = ("instruction", "response", "reference_instruction", "reference_response")
"""Fields a criteria set used in the pipeline may name; its target must be ``response``."""


def pipeline_record(cset: CriteriaSet, state: CandidateState) -> dict[str, str]:
    """The candidate as a record of the set's fields."""
    if cset.target != "response":
        raise CriteriaError(
            f"criteria set {cset.name!r}: the pipeline judges 'response', but target is "
            f"{cset.target!r}"
        )
    available = {
        "instruction": state.instruction.text,
        "response": state.response or "",
        "reference_instruction": state.reference.instruction,
        "reference_response": state.reference.response,
    }
    unknown = [f for f in cset.fields if f not in available]
    if unknown:
        raise CriteriaError(
            f"criteria set {cset.name!r}: fields {unknown} are not available in the pipeline "
            f"(available: {', '.join(PIPELINE_FIELDS)})"
        )
    return {f: available[f] for f in cset.fields}


async def metric_judge(state: CandidateState, runtime: Runtime[RefedContext]) -> dict[str, Any]:
    ctx = runtime.context
    ref, inst = state.reference, state.instruction
    assert state.response is not None, "respond must run first"
    try:
        cset = prompts.criteria(ctx.judge_criteria)
        record = pipeline_record(cset, state)
        if ctx.judge_backend == "encoder":  # the trained metric model (metric/), no LLM
            from metric.node import encoder_judgement

            return await encoder_judgement(ctx, cset, record, state)
        client = judge_client_for(ctx)
    except (CriteriaError, LLMError) as exc:
        return {"error": f"metric_judge: config: {exc}"}
    opts = JudgeOptions.from_context(ctx)
    seed_parts = (ref.id, inst.index, state.revisions)
    usage = Usage()
    try:
        judged = await score_record(
            client, cset, record, opts, per_criterion=ctx.judge_per_criterion, seed_parts=seed_parts
        )
        usage += judged.usage
        result = judged.value
        mean = result.mean
        passed = mean >= ctx.judge_bar
        verdict = None
        if passed and ctx.pairwise_filter and ctx.feedback_mode != "none":
            pair = await compare(
                client,
                cset,
                record,
                state.first_response or "",
                state.response,
                opts,
                seed_parts=seed_parts,
            )
            usage += pair.usage
            verdict = pair.value
            passed = verdict.winner == "second"
    except LLMError as exc:
        return {"usage": usage + exc.usage, "error": f"metric_judge: {exc}"}
    scales = [c.scale for c in cset.criteria]
    judgement = Judgement(
        scores=result.values(),
        rationale=result.rationale,
        mean=mean,
        scale=(min(lo for lo, _ in scales), max(hi for _, hi in scales)),
        method=result.method,
        passed=passed,
        criteria=cset.name,
        pairwise=verdict,
    )
    return {"usage": usage, "judgement": judgement, "judge_notes": result.rationale}


def wants_revision(state: CandidateState, ctx: RefedContext) -> bool:
    """Under the bar with rounds left (never in ``none`` mode: that would be feedback)."""
    j = state.judgement
    return (
        j is not None
        and not j.passed
        and ctx.feedback_mode != "none"
        and state.revisions < ctx.max_revisions
    )
