"""finalize: close a candidate as accepted, rejected (with the reason) or failed."""

from __future__ import annotations

from typing import Any

from state.graph_state import CandidateState
from state.records import Candidate, CandidateStatus


def sample_id(reference_id: str, index: int) -> str:
    return f"{reference_id}-{index:04d}"


async def finalize(state: CandidateState) -> dict[str, Any]:
    inst = state.instruction
    j = state.judgement
    status: CandidateStatus
    reason: str | None
    if state.error is not None:
        status, reason = "failed", state.error
    elif state.rejection is not None:
        f = state.rejection
        status, reason = "rejected", f"check {f.name} on the {f.field}: {f.method}"
    elif j is None:
        status, reason = "failed", "no judgement"
    elif j.passed:
        status, reason = "accepted", None
    elif j.pairwise is not None:
        votes = ", ".join(j.pairwise.votes) or "identical texts"
        status, reason = (
            "rejected",
            f"improved response did not beat the first (pairwise {j.pairwise.winner}: {votes})",
        )
    else:
        status, reason = "rejected", f"judge mean {j.mean:.2f} under the bar"
    candidate = Candidate(
        sample_id=sample_id(state.reference.id, inst.index),
        reference_id=state.reference.id,
        index=inst.index,
        feature=inst.feature,
        instruction=inst.text,
        first_response=state.first_response,
        response=state.response,
        sample_feedback=state.sample_feedback,
        judgement=j,
        revisions=state.revisions,
        status=status,
        reason=reason,
        filter=state.rejection,
        cut=state.cut,
        refine_dropped=state.refine_dropped,
        usage=state.usage,
    )
    return {"candidates": [candidate]}
