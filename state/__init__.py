"""The types everything else shares: records (:mod:`state.records`), the graph state, the
runtime context, the settings (:mod:`state.settings`, the one place URL lists are split),
generation profiles, criteria sets, the judge's results, the LLM's output schemas and
their line form, the service's request and response bodies, and logging.

This package imports no other package of Refed; every other one may import it.
"""

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
