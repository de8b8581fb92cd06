"""One synthesis request through the graph: cached feedback in, events and samples out."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

import prompts
from dataset.quality import QualityGate
from serve.feedback_cache import FeedbackStore
from state.api import SynthesizeRequest, SynthesizeResponse
from state.context import RefedContext
from state.graph_state import ReferenceState
from state.records import Candidate, Provenance, Reference, ReferenceFeedback, Sample, Usage

Graph = CompiledStateGraph[ReferenceState, RefedContext, ReferenceState, ReferenceState]


@dataclass
class Event:
    """A server-sent event: ``progress`` (a node finished), ``sample``, ``done``."""

    name: str
    data: dict[str, Any]


def reference_of(req: SynthesizeRequest) -> Reference:
    return Reference.from_pair(
        req.instruction.strip(), req.response.strip(), id=req.id, source="api"
    )


async def synthesize(
    app: Graph,
    cache: FeedbackStore,
    base_context: RefedContext,
    req: SynthesizeRequest,
    gate: QualityGate | None = None,
) -> AsyncIterator[Event]:
    """Run the graph for one request; the last event is ``done`` with the full response.

    ``gate`` is the service's quality gate (None: its settings turn every gate off); the
    request's ``options.quality_gates`` switches it off, or on with the batch defaults.
    """
    request_id = secrets.token_hex(8)
    ref = reference_of(req)
    screen = request_gate(gate, req.options.quality_gates, ref)
    overrides = {
        k: v for k, v in req.options.model_dump(exclude={"quality_gates"}).items() if v is not None
    }
    context = RefedContext(
        **{
            **base_context.__dict__,
            **overrides,
            "per_reference": req.samples,
            "run_id": f"svc-{request_id}",
        }
    )
    cached = await cache.get(ref) if context.feedback_mode == "reference" else None
    provenance = Provenance(
        run_id=context.run_id,
        model=context.model,
        feedback_mode=context.feedback_mode,
        prompt_versions=prompts.versions(),
        reference_instruction=ref.instruction,
        reference_response=ref.response,
    )
    cfg: RunnableConfig = {"configurable": {"thread_id": f"svc:{request_id}"}}
    start = ReferenceState(reference=ref, feedback=cached)
    stored = cached is not None
    screened: dict[str, Sample] = {}  # sample_id -> the sample as the gate left it
    async for chunk in app.astream(start, cfg, context=context, stream_mode="updates"):
        for node, update in chunk.items():
            yield Event("progress", {"node": node})
            changed = update if isinstance(update, dict) else {}  # None: a candidate passed on
            fresh = changed.get("feedback")
            if not stored and fresh is not None:
                # cached as soon as it exists: a request cut short later (shutdown, client
                # gone, an LLM failure) does not lose the feedback calls it paid for
                await cache.put(ref, ReferenceFeedback.model_validate(fresh))
                stored = True
            for c in changed.get("candidates") or []:
                sample = Sample(**Candidate.model_validate(c).model_dump(), provenance=provenance)
                if screen is not None:
                    sample = screened.setdefault(sample.sample_id, screen.screen([sample])[0])
                yield Event("sample", sample.model_dump(mode="json"))
    values = (await app.aget_state(cfg)).values
    candidates = [Candidate.model_validate(c) for c in values.get("candidates", [])]
    usage = Usage.model_validate(values.get("usage") or {})
    for c in candidates:
        usage += c.usage
    feedback = values.get("feedback")
    if not stored and feedback is not None:
        await cache.put(ref, ReferenceFeedback.model_validate(feedback))
    samples = [Sample(**c.model_dump(), provenance=provenance) for c in candidates]
    if screen is not None:
        samples = [
            screened.get(s.sample_id) or screened.setdefault(s.sample_id, screen.screen([s])[0])
            for s in samples
        ]
    response = SynthesizeResponse(
        request_id=request_id,
        reference_id=ref.id,
        feedback_cached=cached is not None,
        samples=[s for s in samples if s.status == "accepted"],
        rejected=[s for s in samples if s.status != "accepted"],
        usage=usage,
        error=values.get("error"),
    )
    yield Event("done", response.model_dump(mode="json"))


def request_gate(
    gate: QualityGate | None, wanted: bool | None, ref: Reference
) -> QualityGate | None:
    """The gate for one request, with its reference indexed as the seed (or None: off).

    Samples are screened against the reference and against each other, not against
    other requests: the service keeps no dataset to be a duplicate of.
    """
    if wanted is False or (wanted is None and gate is None):
        return None
    screen = (gate or QualityGate()).fresh()
    screen.load([], [ref])
    return screen
