"""metric_judge: score the current answer on the criteria set, told the task in plain words.

By default one call scores every criterion (``judge_per_criterion`` makes it one call
each); with log-probabilities (``judge_logprobs``) each score is the expectation over
the scale. The mean against the bar decides acceptance and, under the bar, whether
another revision round runs. The bar is a number, or (``reference[:MARGIN]``) the score
the same judge gave the candidate's own reference pair, less the margin
(:mod:`nodes.reference_judge`). With ``pairwise_filter`` (the paper's filter) a sample
that clears the bar must also have its improved response beat the first one, asked in
both orders (two more calls); that verdict is kept on the judgement.

``judge_backend = "encoder"`` scores with the trained metric model instead of an LLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langgraph.runtime import Runtime

import prompts
from judge.scoring import Judged, JudgeOptions, compare, score_record
from llm.client import LLMError
from llm.factory import judge_client_for
from metric.node import encoder_compare, encoder_score
from state.context import RefedContext
from state.criteria import CriteriaError, CriteriaSet
from state.graph_state import CandidateState
from state.judgements import JudgeBar, PairwiseVerdict, PointwiseResult
from state.records import Judgement, Usage

PIPELINE_FIELDS = ("instruction", "response", "reference_instruction", "reference_response")
"""Fields a criteria set used in the pipeline may name; its target must be ``response``."""


def pipeline_record(
    cset: CriteriaSet,
    instruction: str,
    response: str,
    reference_instruction: str,
    reference_response: str,
) -> dict[str, str]:
    """A candidate (or a reference pair) as a record of the set's fields."""
    if cset.target != "response":
        raise CriteriaError(
            f"criteria set {cset.name!r}: the pipeline judges 'response', but target is "
            f"{cset.target!r}"
        )
    available = {
        "instruction": instruction,
        "response": response,
        "reference_instruction": reference_instruction,
        "reference_response": reference_response,
    }
    unknown = [f for f in cset.fields if f not in available]
    if unknown:
        raise CriteriaError(
            f"criteria set {cset.name!r}: fields {unknown} are not available in the pipeline "
            f"(available: {', '.join(PIPELINE_FIELDS)})"
        )
    return {f: available[f] for f in cset.fields}


def _encoder_problem(folder: str | None, exc: Exception) -> str:
    """``encoder FOLDER: what went wrong``, the folder named once."""
    said = str(exc) or type(exc).__name__
    return f"encoder: {said}" if folder and folder in said else f"encoder {folder}: {said}"


async def judge_scores(
    ctx: RefedContext, cset: CriteriaSet, record: dict[str, str], seed_parts: Sequence[object]
) -> Judged[PointwiseResult]:
    """``record`` scored by the configured judge (an LLM, or the metric encoder)."""
    if ctx.judge_backend == "encoder":  # the trained metric model (metric/), no LLM
        try:
            return Judged(await encoder_score(ctx, cset, record), Usage())
        except Exception as exc:  # recorded on the candidate, never raised through the fan-out
            raise LLMError("config", _encoder_problem(ctx.judge_encoder, exc)) from exc
    client = judge_client_for(ctx)
    return await score_record(
        client,
        cset,
        record,
        JudgeOptions.from_context(ctx),
        per_criterion=ctx.judge_per_criterion,
        seed_parts=seed_parts,
    )


async def judge_compare(
    ctx: RefedContext,
    cset: CriteriaSet,
    record: dict[str, str],
    first: str,
    second: str,
    second_mean: float,
    seed_parts: Sequence[object],
) -> Judged[PairwiseVerdict]:
    """The improved response ``second`` against ``first``, by the configured judge."""
    if ctx.judge_backend == "encoder":
        try:
            return Judged(await encoder_compare(ctx, cset, record, first, second_mean), Usage())
        except Exception as exc:
            raise LLMError("config", _encoder_problem(ctx.judge_encoder, exc)) from exc
    client = judge_client_for(ctx)
    opts = JudgeOptions.from_context(ctx)
    return await compare(client, cset, record, first, second, opts, seed_parts=seed_parts)


def judgement_of(
    result: PointwiseResult,
    cset: CriteriaSet,
    passed: bool,
    verdict: PairwiseVerdict | None = None,
    threshold: float | None = None,
) -> Judgement:
    scales = [c.scale for c in cset.criteria]
    return Judgement(
        scores=result.values(),
        rationale=result.rationale,
        mean=result.mean,
        scale=(min(lo for lo, _ in scales), max(hi for _, hi in scales)),
        method=result.method,
        passed=passed,
        criteria=cset.name,
        pairwise=verdict,
        threshold=threshold,
    )


async def metric_judge(state: CandidateState, runtime: Runtime[RefedContext]) -> dict[str, Any]:
    ctx = runtime.context
    ref, inst = state.reference, state.instruction
    assert state.response is not None, "respond must run first"
    try:
        cset = prompts.criteria(ctx.judge_criteria)
        record = pipeline_record(cset, inst.text, state.response, ref.instruction, ref.response)
        threshold = JudgeBar.parse(ctx.judge_bar).threshold(state.reference_score)
    except (CriteriaError, ValueError) as exc:
        return {"error": f"metric_judge: config: {exc}"}
    if threshold is None:
        return {"error": "metric_judge: the bar is anchored on the reference, which has no score"}
    seed_parts = (ref.id, inst.index, state.revisions)
    usage = Usage()
    try:
        judged = await judge_scores(ctx, cset, record, seed_parts)
        usage += judged.usage
        result = judged.value
        passed = result.mean >= threshold
        verdict = None
        if passed and ctx.pairwise_filter and ctx.feedback_mode != "none":
            pair = await judge_compare(
                ctx,
                cset,
                record,
                state.first_response or "",
                state.response,
                result.mean,
                seed_parts,
            )
            usage += pair.usage
            verdict = pair.value
            passed = verdict.winner == "second"
    except LLMError as exc:
        said = exc.message if exc.kind == "config" else str(exc)
        return {"usage": usage + exc.usage, "error": f"metric_judge: {said}"}
    judgement = judgement_of(result, cset, passed, verdict, threshold)
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
