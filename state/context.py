"""The runtime context every node receives (LangGraph ``context_schema``).

Plain values only, so LangGraph Studio can show and edit it. Defaults come from
:class:`state.settings.RefedSettings` (environment, config file), so Studio, the
batch runner and the service agree. The LLM client itself is not in the context:
nodes get it from ``nodes.llm.client_for(context)``, which builds one per endpoint
or returns one registered under ``client_key`` (the runner, the service and tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from state.records import FeedbackMode
from state.settings import RefedSettings


def _default(name: str) -> Any:
    return field(default_factory=lambda: getattr(RefedSettings(), name))


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

    judge_bar: float = _default("judge_bar")
    """Mean judge score (1-5) a sample needs to be accepted."""

    max_revisions: int = _default("max_revisions")
    """Revise rounds for a response the judge scores under the bar."""

    temperature: float = _default("temperature")
    judge_temperature: float = _default("judge_temperature")
    max_tokens: int = _default("max_tokens")
    seed: int = _default("seed")

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

    @classmethod
    def from_settings(cls, settings: RefedSettings, **overrides: Any) -> RefedContext:
        names = {f.name for f in fields(cls)}
        values = {n: getattr(settings, n) for n in names if n in RefedSettings.model_fields}
        values.update(overrides)
        return cls(**values)
