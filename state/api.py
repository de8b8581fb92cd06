"""Request and response bodies of the HTTP service (``serve/``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from state.records import FeedbackMode, ReferenceFeedback, Sample, Usage


class SynthesizeOptions(BaseModel):
    """Per-request overrides of the service's settings."""

    model_config = ConfigDict(extra="forbid")

    feedback_mode: FeedbackMode | None = None
    judge_bar: float | None = Field(default=None, ge=1, le=5)
    temperature: float | None = Field(default=None, ge=0, le=2)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    quality_gates: bool | None = Field(
        default=None,
        description="Screen accepted samples with the batch job's quality gates "
        "(near-duplicates of the reference or of each other, benchmark contamination); a "
        "dropped one is returned under rejected with its reason and filter. Default: on when "
        "the service's settings turn a gate on (near_dup, decontaminate).",
    )


class SynthesizeRequest(BaseModel):
    """One reference pair and how many new samples to derive from it."""

    model_config = ConfigDict(extra="forbid")

    instruction: str = Field(min_length=1, max_length=50_000)
    response: str = Field(min_length=1, max_length=50_000)
    id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Reference id; default: a hash of the pair.",
    )
    samples: int = Field(default=4, ge=1, description="New instructions to synthesize.")
    options: SynthesizeOptions = Field(default_factory=SynthesizeOptions)


class SynthesizeResponse(BaseModel):
    request_id: str
    reference_id: str
    feedback_cached: bool = Field(description="The reference's feedback came from the cache.")
    samples: list[Sample] = Field(description="Accepted samples.")
    rejected: list[Sample] = Field(description="Rejected or failed candidates, with reasons.")
    usage: Usage = Field(description="LLM calls and tokens this request spent.")
    error: str | None = None


class FeedbackView(BaseModel):
    reference_id: str
    model: str
    prompt_version: str
    feedback: ReferenceFeedback


class ErrorBody(BaseModel):
    error: str
    detail: str | list[dict[str, object]] | None = None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    detail: str | None = None
