"""Graph state: one thread per reference; each new instruction a candidate sent between nodes."""

from __future__ import annotations

import operator
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from state.records import (
    Candidate,
    DroppedInstruction,
    InstructionAnalysis,
    Judgement,
    NewInstruction,
    QualityFilter,
    Reference,
    ReferenceFeedback,
    ResponseAnalysis,
    Usage,
    add_usage,
)


class ReferenceState(BaseModel):
    """State of one reference's thread."""

    reference: Reference
    instruction_analysis: InstructionAnalysis | None = None
    response_analysis: ResponseAnalysis | None = None
    feedback: ReferenceFeedback | None = None
    instructions: list[NewInstruction] = Field(default_factory=list)
    dropped_instructions: list[DroppedInstruction] = Field(default_factory=list)
    reference_judgement: Judgement | None = None
    """The judge's scores of the reference pair itself (anchored bars)."""
    candidates: Annotated[list[Candidate], operator.add] = Field(default_factory=list)
    usage: Annotated[Usage, add_usage] = Field(default_factory=Usage)
    error: str | None = None


class CandidateState(BaseModel):
    """One new instruction on its way through respond, self-critique, judge and revise.

    It travels in ``Send`` packets from node to node of its reference's thread (each
    step's result is checkpointed with its task); a node returns a partial update of it,
    whose ``usage`` adds to what the candidate has spent so far.
    """

    reference: Reference
    feedback: ReferenceFeedback | None = None
    instruction: NewInstruction
    first_response: str | None = None
    response: str | None = None
    sample_feedback: str | None = None
    judge_notes: str | None = None
    judgement: Judgement | None = None
    reference_score: float | None = None
    """The judge's mean score of this candidate's reference (anchored bars)."""
    rejection: QualityFilter | None = None
    """A validity check the answer failed: the candidate closes as rejected, unjudged."""
    cut: Literal["loop", "cap"] | None = None
    refine_dropped: str | None = None
    revisions: int = 0
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
