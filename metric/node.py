"""The metric-judge node's encoder backend (``judge_backend = "encoder"``).

Scores the candidate on every criterion of the configured criteria set with the trained
metric model (``judge_encoder``: a saved folder, run in-process, or the URL of a vLLM server
serving it), applies the bar, and with the pairwise filter compares the improved response
with the first one by the same model. No LLM call, no token usage. The judgement's
``method`` is ``encoder`` and its rationale names the backend that scored it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from state.context import RefedContext
from state.criteria import CriteriaSet
from state.graph_state import CandidateState
from state.judgements import PairwiseVerdict
from state.records import Judgement


async def encoder_judgement(
    ctx: RefedContext, cset: CriteriaSet, record: dict[str, str], state: CandidateState
) -> dict[str, Any]:
    """The node's partial state update, scored by the metric encoder."""
    from metric.evaluate import vote
    from metric.serving import metric_judge_for

    # Any failure is recorded on the candidate, never raised through the fan-out.
    try:
        judge = await asyncio.to_thread(metric_judge_for, ctx.judge_encoder)
        result = await asyncio.to_thread(judge.score_record, cset, record)
    except Exception as exc:
        return {"error": f"metric_judge: encoder {ctx.judge_encoder}: {exc!r}"}
    mean = result.mean
    passed = mean >= ctx.judge_bar
    verdict = None
    if passed and ctx.pairwise_filter and ctx.feedback_mode != "none":
        first = {**record, cset.target: state.first_response or ""}
        try:
            before = await asyncio.to_thread(judge.score_record, cset, first)
        except Exception as exc:
            return {"error": f"metric_judge: encoder {ctx.judge_encoder}: {exc!r}"}
        winner = vote(before.mean, mean)
        verdict = PairwiseVerdict(
            winner=winner,
            votes=(winner,),
            rationale=f"metric encoder: first {before.mean:.3f}, improved {mean:.3f}",
        )
        passed = winner == "second"
    scales = [c.scale for c in cset.criteria]
    judgement = Judgement(
        scores=result.values(),
        rationale=result.rationale,
        mean=mean,
        scale=(min(lo for lo, _ in scales), max(hi for _, hi in scales)),
        method="encoder",
        passed=passed,
        criteria=cset.name,
        pairwise=verdict,
    )
    return {"judgement": judgement, "judge_notes": result.rationale}
