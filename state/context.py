"""The runtime context every node receives (LangGraph ``context_schema``).

Plain values only, so LangGraph Studio can show and edit it. Defaults come from
:class:`state.settings.RefedSettings` (environment, config file), so Studio, the
batch runner and the service agree. The LLM client itself is not in the context:
nodes get it from ``llm.factory.client_for(context)``, which returns the one registered
under ``client_key`` (the runner, the service and tests) or, in Studio, makes one per
endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from state.profile import with_named_profile
from state.records import FeedbackMode
from state.settings import RefedSettings


def _default(name: str) -> Any:
    return field(default_factory=lambda: getattr(_settings(), name))


def _settings() -> RefedSettings:
    """The settings from the environment and config file, with the profile they name
    (``REFED_PROFILE``, e.g. in Studio's ``.env``) applied."""
    return with_named_profile(RefedSettings())


@dataclass(kw_only=True)
class RefedContext:
    """Per-run knobs for the graph."""

    model: str = _default("model")
    """Model name on the OpenAI-compatible server."""

    base_url: str | None = _default("base_url")
    """Server URL (…/v1). Studio needs one: the embedded server prints it."""

    feedback_mode: FeedbackMode = _default("feedback_mode")
    """reference (the method), sample (baseline: feedback per sample) or none."""

    per_reference: int = _default("per_reference")
    """How many new instructions to synthesize from each reference."""

    judge_bar: str = _default("judge_bar")
    """What a sample's mean judge score must reach: a number, or reference[:MARGIN]."""

    max_revisions: int = _default("max_revisions")
    """Revise rounds for a response the judge scores under the bar."""

    profile: str | None = _default("profile")
    """The generation profile these settings came from (provenance only)."""

    prompt_variants: dict[str, str] = _default("prompt_variants")
    """Prompt file per task where the default is not used (``respond: small/respond``)."""

    temperature: float = _default("temperature")
    synthesis_temperature: float | None = _default("synthesis_temperature")
    feedback_temperature: float = _default("feedback_temperature")
    top_p: float | None = _default("top_p")
    min_p: float | None = _default("min_p")
    top_k: int | None = _default("top_k")
    repetition_penalty: float | None = _default("repetition_penalty")
    frequency_penalty: float | None = _default("frequency_penalty")
    presence_penalty: float | None = _default("presence_penalty")
    max_tokens: int = _default("max_tokens")
    respond_max_tokens: int | None = _default("respond_max_tokens")
    refine_max_tokens: int | None = _default("refine_max_tokens")
    line_max_chars: int | None = _default("line_max_chars")
    """Longest value of a structured answer in the line form."""
    synthesis_mode: str = _default("synthesis_mode")
    """list: one call returns several instructions; sampled: n completions of one each."""
    synthesis_oversample: float = _default("synthesis_oversample")
    synthesis_max_tokens: int = _default("synthesis_max_tokens")
    analysis_max_tokens: int = _default("analysis_max_tokens")
    distill_max_tokens: int = _default("distill_max_tokens")
    feedback_max_tokens: int = _default("feedback_max_tokens")
    seed: int = _default("seed")

    judge_temperature: float = _default("judge_temperature")
    judge_top_p: float | None = _default("judge_top_p")
    judge_min_p: float | None = _default("judge_min_p")
    judge_top_k: int | None = _default("judge_top_k")
    judge_repetition_penalty: float | None = _default("judge_repetition_penalty")
    judge_frequency_penalty: float | None = _default("judge_frequency_penalty")
    judge_presence_penalty: float | None = _default("judge_presence_penalty")

    checks: bool = _default("checks")
    """Validity checks on instructions and answers before any judge call."""
    relevance_min: float | None = _default("relevance_min")
    """Least embedding similarity of an answer with its request (None: not checked)."""
    loop_rule: str = _default("loop_rule")
    """cut: keep a cut-off answer up to its last complete sentence; fail: fail it."""

    judge_base_url: str | None = _default("judge_base_url")
    """The judge's own endpoint; None: the generator's."""

    judge_model: str | None = _default("judge_model")
    """The judge's model; None: the generator's."""

    judge_concurrency: int | None = _default("judge_concurrency")
    judge_criteria: str = _default("judge_criteria")
    """Criteria set the metric judge scores on (built-in name or TOML file)."""

    judge_logprobs: int = _default("judge_logprobs")
    """Top log-probabilities per token (0: sampled scores only)."""

    judge_rationale_chars: int = _default("judge_rationale_chars")
    judge_per_criterion: bool = _default("judge_per_criterion")
    """One call per criterion (costlier) instead of one call for all."""

    judge_backend: str = _default("judge_backend")
    """llm (the LLM judge) or encoder (the trained metric model at ``judge_encoder``)."""

    judge_encoder: str = _default("judge_encoder")
    """Saved metric folder (in-process) or URL of a vLLM server serving it."""

    pairwise_filter: bool = _default("pairwise_filter")
    """Keep a sample only if the improved response beats the first one (pairwise)."""

    run_id: str = "studio"
    """Names the run in provenance and request seeds."""

    client_key: str | None = None
    """Name of a pre-registered LLM client (set by the runner/service; not for Studio)."""

    judge_client_key: str | None = None
    """Name of a pre-registered LLM client for the judge (None: as for the generator)."""

    def sampling(self) -> dict[str, Any]:
        """The generator's sampling parameters that are set (temperature aside)."""
        return _set(
            top_p=self.top_p,
            min_p=self.min_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
        )

    def judge_sampling(self) -> dict[str, Any]:
        """The judge's sampling parameters that are set (temperature aside)."""
        return _set(
            top_p=self.judge_top_p,
            min_p=self.judge_min_p,
            top_k=self.judge_top_k,
            repetition_penalty=self.judge_repetition_penalty,
            frequency_penalty=self.judge_frequency_penalty,
            presence_penalty=self.judge_presence_penalty,
        )

    @classmethod
    def from_settings(cls, settings: RefedSettings, **overrides: Any) -> RefedContext:
        names = {f.name for f in fields(cls)}
        values = {n: getattr(settings, n) for n in names if n in RefedSettings.model_fields}
        values.update(overrides)
        return cls(**values)


def _set(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
