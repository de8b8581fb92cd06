"""Graph state: one thread per reference, one candidate subgraph per new instruction."""

from __future__ import annotations

import operator
from typing import Annotated

from pydantic import BaseModel, Field

from state.records import (
    Candidate,
    InstructionAnalysis,
    Judgement,
    NewInstruction,
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
    candidates: Annotated[list[Candidate], operator.add] = Field(default_factory=list)
    usage: Annotated[Usage, add_usage] = Field(default_factory=Usage)
    error: str | None = None


class CandidateInput(BaseModel):
    """What the fan-out sends to the candidate subgraph."""

    reference: Reference
    feedback: ReferenceFeedback | None = None
    instruction: NewInstruction


class CandidateState(CandidateInput):
    """State inside the candidate subgraph: respond, self-critique, judge, revise."""

    first_response: str | None = None
    response: str | None = None
    sample_feedback: str | None = None
    judge_notes: str | None = None
    judgement: Judgement | None = None
    revisions: int = 0
    error: str | None = None
    usage: Annotated[Usage, add_usage] = Field(default_factory=Usage)
    candidates: Annotated[list[Candidate], operator.add] = Field(default_factory=list)


class CandidateOutput(BaseModel):
    """What the candidate subgraph hands back to the reference thread."""

    candidates: Annotated[list[Candidate], operator.add] = Field(default_factory=list)
