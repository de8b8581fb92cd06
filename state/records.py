"""Records that flow through Refed and leave it: references, feedback, samples, stats.

Every record written to a run folder or returned over HTTP is one of these models,
serialised with ``model_dump_json``; ``schema.json`` in each run folder holds their
JSON schemas.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from state.judgements import Method, PairwiseVerdict

FeedbackMode = Literal["reference", "sample", "none"]
CandidateStatus = Literal["accepted", "rejected", "failed"]


def content_id(*parts: str, length: int = 16) -> str:
    """A stable id from text content (sha256 over NUL-joined parts)."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()
    return digest[:length]


class Reference(BaseModel):
    """One high-quality seed pair. Its feedback guides every sample derived from it."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Stable id: given by the seed record, else a content hash.")
    instruction: str = Field(min_length=1)
    response: str = Field(min_length=1)
    source: str | None = Field(default=None, description="Where it came from: file and record.")

    @classmethod
    def from_pair(
        cls, instruction: str, response: str, *, id: str | None = None, source: str | None = None
    ) -> Reference:
        return cls(
            id=id or content_id(instruction, response),
            instruction=instruction,
            response=response,
            source=source,
        )


class Usage(BaseModel):
    """LLM spend. Adds up with ``+`` so it can be a LangGraph reducer."""

    calls: int = 0
    feedback_calls: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            feedback_calls=self.feedback_calls + other.feedback_calls,
            failed_calls=self.failed_calls + other.failed_calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


def add_usage(left: Usage | None, right: Usage | None) -> Usage:
    """Reducer for usage channels (None-safe)."""
    return (left or Usage()) + (right or Usage())


class InstructionAnalysis(BaseModel):
    """What makes the reference instruction good: its subject areas, skills, clarity."""

    subject_areas: list[str] = Field(default_factory=list)
    skills: list[str] = Field(default_factory=list)
    clarity: str = ""


class ResponseAnalysis(BaseModel):
    """Strengths and gaps of the reference response."""

    content: str = ""
    communication: str = ""
    alignment: str = ""
    improvements: list[str] = Field(default_factory=list)


class ReferenceFeedback(BaseModel):
    """Feedback collected once per reference, then reused for all its samples."""

    reference_id: str
    instruction: InstructionAnalysis
    response: ResponseAnalysis
    instruction_guidance: list[str] = Field(
        default_factory=list, description="Distilled: what a good new instruction should have."
    )
    response_guidance: list[str] = Field(
        default_factory=list, description="Distilled: how to improve a response in this spirit."
    )
    reference_judgement: Judgement | None = Field(
        default=None,
        description="The judge's scores of the reference pair itself (the anchor of a "
        "reference[:MARGIN] bar).",
    )
    usage: Usage = Field(default_factory=Usage)

    def features(self) -> list[str]:
        """Instruction features that new instructions are generated for (deduplicated)."""
        seen: dict[str, None] = {}
        for item in [*self.instruction.subject_areas, *self.instruction.skills]:
            key = item.strip()
            if key and key.lower() not in {k.lower() for k in seen}:
                seen[key] = None
        return list(seen)


class NewInstruction(BaseModel):
    """A synthesized instruction with the feature it was generated for."""

    index: int = Field(ge=0, description="Position among the reference's new instructions.")
    text: str
    feature: str | None = None


class Judgement(BaseModel):
    """The metric judge's verdict on one response."""

    scores: dict[str, float] = Field(description="Score per criterion.")
    rationale: str = ""
    mean: float
    scale: tuple[int, int] = (1, 5)
    method: Method = Field(
        default="sampled",
        description="logprob: scores are probability-weighted means over the scale's tokens; "
        "sampled: the scores the judge wrote; mixed: some of each.",
    )
    passed: bool
    threshold: float | None = Field(
        default=None,
        description="The mean it had to reach: the bar, or its reference's score less the margin.",
    )
    criteria: str | None = Field(default=None, description="The criteria set scored on.")
    pairwise: PairwiseVerdict | None = Field(
        default=None,
        description="With the pairwise filter: the improved response (second) against the "
        "first one, asked in both orders.",
    )


GateName = Literal["near-duplicate", "decontamination"]
CheckName = Literal[
    "copies-prompt",
    "feature-label",
    "not-a-request",
    "personal-question",
    "degenerate",
    "asks-back",
    "restates-request",
    "replies-to-feedback",
    "off-topic",
]
GATE_NAMES: frozenset[str] = frozenset(("near-duplicate", "decontamination"))


class QualityFilter(BaseModel):
    """Why a sample was dropped without the judge: a quality gate (near-duplicate,
    decontamination; after the judge accepted it) or a validity check (before any judge
    call: dataset/validity.py, dataset/relevance.py)."""

    name: GateName | CheckName
    method: str = Field(description="What was measured: rouge-l, N-gram share, too short, ...")
    score: float | None = Field(default=None, description="The measure (e.g. ROUGE-L F1).")
    field: str = Field(default="instruction", description="The sample's field it concerns.")
    match_id: str | None = Field(
        default=None, description="Gates: a sample_id, seed:REFERENCE_ID or BENCHMARK#N."
    )
    match_text: str | None = Field(
        default=None, description="The matched or offending text (cut at 500 characters)."
    )
    source: str | None = Field(
        default=None, description="sample, seed, the benchmark's name, or check."
    )

    @property
    def is_gate(self) -> bool:
        return self.name in GATE_NAMES


class Candidate(BaseModel):
    """One new sample as it leaves the candidate subgraph: accepted, rejected or failed."""

    sample_id: str
    reference_id: str
    index: int
    feature: str | None = None
    instruction: str
    first_response: str | None = None
    response: str | None = None
    sample_feedback: str | None = None
    judgement: Judgement | None = None
    revisions: int = 0
    status: CandidateStatus
    reason: str | None = None
    filter: QualityFilter | None = Field(
        default=None,
        description="Set when a validity check or a quality gate rejected the sample.",
    )
    cut: Literal["loop", "cap"] | None = Field(
        default=None,
        description="The answer was cut off at its token cap and kept up to its last "
        "complete sentence: before a repetition loop (loop) or before the cap (cap).",
    )
    refine_dropped: str | None = Field(
        default=None,
        description="The refinement failed a validity check (the reason); the first "
        "response stands as the response.",
    )
    usage: Usage = Field(default_factory=Usage)


class DroppedInstruction(BaseModel):
    """A synthesized instruction a validity check dropped before it was answered."""

    text: str
    feature: str | None = None
    filter: QualityFilter


class Provenance(BaseModel):
    run_id: str
    model: str
    feedback_mode: FeedbackMode
    prompt_versions: dict[str, str]
    reference_instruction: str
    reference_response: str


class Sample(Candidate):
    """A candidate with its provenance, as written to samples.jsonl / rejected.jsonl."""

    provenance: Provenance


class ReferenceDone(BaseModel):
    """Marker written to references.jsonl when a reference's thread has finished."""

    reference_id: str
    accepted: int
    rejected: int
    usage: Usage
    reference_score: float | None = Field(
        default=None, description="The judge's mean score of the reference pair itself."
    )
    dropped_instructions: list[DroppedInstruction] = Field(
        default_factory=list, description="Synthesized instructions a validity check dropped."
    )
    error: str | None = Field(default=None, description="Why the reference produced nothing.")


class RunStats(BaseModel):
    """Counters in run.json. Per-sample figures divide by accepted samples."""

    references_done: int = 0
    accepted: int = 0
    rejected: int = 0
    usage: Usage = Field(default_factory=Usage)
    llm_calls_per_accepted: float | None = None
    feedback_calls_per_accepted: float | None = None
    prompt_tokens_per_accepted: float | None = None
    completion_tokens_per_accepted: float | None = None
    process_calls: int = Field(
        default=0, description="LLM requests made by processes of this run, retries included."
    )
    reference_scores: dict[str, float] | None = Field(
        default=None,
        description="The judge's scores of the references themselves (anchored bars): n, "
        "mean, min, max.",
    )
    instructions_dropped: int = Field(
        default=0, description="Synthesized instructions a validity check dropped unanswered."
    )

    def with_references(self, done: Iterable[ReferenceDone]) -> RunStats:
        """These counters with what the finished references' markers say."""
        markers = list(done)
        scores = [d.reference_score for d in markers if d.reference_score is not None]
        if scores:
            self.reference_scores = {
                "n": len(scores),
                "mean": sum(scores) / len(scores),
                "min": min(scores),
                "max": max(scores),
            }
        self.instructions_dropped = sum(len(d.dropped_instructions) for d in markers)
        return self

    def finish(self) -> RunStats:
        n = self.accepted
        if n:
            self.llm_calls_per_accepted = self.usage.calls / n
            self.feedback_calls_per_accepted = self.usage.feedback_calls / n
            self.prompt_tokens_per_accepted = self.usage.prompt_tokens / n
            self.completion_tokens_per_accepted = self.usage.completion_tokens / n
        return self
