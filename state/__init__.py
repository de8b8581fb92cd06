"""Records, graph state, runtime context and settings: the types everything else shares."""

from state.context import RefedContext
from state.graph_state import CandidateState, ReferenceState
from state.records import (
    Candidate,
    FeedbackMode,
    InstructionAnalysis,
    Judgement,
    NewInstruction,
    Provenance,
    Reference,
    ReferenceDone,
    ReferenceFeedback,
    ResponseAnalysis,
    RunStats,
    Sample,
    Usage,
    content_id,
)
from state.settings import RefedSettings

__all__ = [
    "Candidate",
    "CandidateState",
    "FeedbackMode",
    "InstructionAnalysis",
    "Judgement",
    "NewInstruction",
    "Provenance",
    "RefedContext",
    "RefedSettings",
    "Reference",
    "ReferenceDone",
    "ReferenceFeedback",
    "ReferenceState",
    "ResponseAnalysis",
    "RunStats",
    "Sample",
    "Usage",
    "content_id",
]
