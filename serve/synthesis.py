"""One synthesis request through the graph: cached feedback in, events and samples out."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

import prompts
from serve.feedback_cache import FeedbackCache
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
    cache: FeedbackCache,
    base_context: RefedContext,
    req: SynthesizeRequest,
) -> AsyncIterator[Event]:
    """Run the graph for one request; the last event is ``done`` with the full response."""
    request_id = secrets.token_hex(8)
    ref = reference_of(req)
    overrides = {k: v for k, v in req.options.model_dump().items() if v is not None}
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
    async for chunk in app.astream(start, cfg, context=context, stream_mode="updates"):
        for node, update in chunk.items():
            yield Event("progress", {"node": node})
            if node == "candidate" and update:
                for c in update.get("candidates", []):
                    sample = Sample(
                        **Candidate.model_validate(c).model_dump(), provenance=provenance
                    )
                    yield Event("sample", sample.model_dump(mode="json"))
    values = (await app.aget_state(cfg)).values
    candidates = [Candidate.model_validate(c) for c in values.get("candidates", [])]
    usage = Usage.model_validate(values.get("usage") or {})
    for c in candidates:
        usage += c.usage
    feedback = values.get("feedback")
    if cached is None and feedback is not None:
        await cache.put(ref, ReferenceFeedback.model_validate(feedback))
    samples = [Sample(**c.model_dump(), provenance=provenance) for c in candidates]
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
