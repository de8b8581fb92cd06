"""The service's routes, as two routers over the :class:`~serve.service.Service` the app
holds (``app.state.service``):

POST /v1/synthesize          one reference in, judged samples out
POST /v1/synthesize/stream   the same as server-sent events (progress, sample, done)
GET  /v1/feedback/{id}       the cached reference-level feedback
GET  /healthz /readyz /metrics
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import structlog
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llm.stops import RunStop
from serve.service import Service, llm_failure_status, readiness
from state.api import ErrorBody, FeedbackView, Health, SynthesizeRequest, SynthesizeResponse
from state.logs import redact

log = structlog.get_logger("refed.serve")

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
    413: {"model": ErrorBody, "description": "Body larger than max_body_bytes."},
    422: {"model": ErrorBody, "description": "Invalid request body."},
    502: {
        "model": ErrorBody,
        "description": "The LLM server answered with an error, or with an answer that "
        "could not be used (not JSON, cut off, not of the schema).",
    },
    503: {
        "model": ErrorBody,
        "description": "Too many requests in flight, or the LLM server "
        "is unreachable or overloaded (see Retry-After).",
    },
    504: {"model": ErrorBody, "description": "The LLM server timed out."},
}


def the_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


_bearer = HTTPBearer(auto_error=False)


async def require_token(
    service: Service = Depends(the_service),  # noqa: B008
    creds: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
) -> None:
    """The bearer token, when the service has one."""
    if service.token is None:
        return
    if creds is None or not secrets.compare_digest(creds.credentials, service.token):
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


synthesis = APIRouter(tags=["synthesis"], dependencies=[Depends(require_token)])
operations = APIRouter(tags=["operations"])


@synthesis.post("/v1/synthesize", response_model=SynthesizeResponse, responses=ERRORS)
async def synthesize_once(
    req: SynthesizeRequest,
    request: Request,
    service: Service = Depends(the_service),  # noqa: B008
) -> Any:
    """Derive new judged samples from one reference pair."""
    service.admit(req)

    async def work() -> SynthesizeResponse:
        last = None
        async for event in service.run(req):
            last = event
        assert last is not None and last.name == "done"
        return SynthesizeResponse.model_validate(last.data)

    task = asyncio.create_task(work())
    service.working.add(task)
    task.add_done_callback(service.working.discard)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                break
            if await request.is_disconnected():
                task.cancel()
                log.info("client_disconnected", path="/v1/synthesize")
                return Response(status_code=499)
    except asyncio.CancelledError:
        task.cancel()  # this request was cancelled (shutdown grace over): so is its work
        raise
    try:
        result = task.result()
    except RunStop as exc:  # the LLM server refuses every request (key, model)
        return JSONResponse(
            ErrorBody(error="llm_failed", detail=redact(str(exc))).model_dump(), 502
        )
    if result.error and not result.samples and not result.rejected:
        status, retry_after = llm_failure_status(result.error)
        return JSONResponse(
            ErrorBody(error="llm_failed", detail=redact(result.error)).model_dump(),
            status,
            headers={"Retry-After": retry_after} if retry_after else None,
        )
    return result


@synthesis.post(
    "/v1/synthesize/stream",
    responses={
        **ERRORS,
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-sent events: `progress` {node}, `sample` (a Sample), "
            "and last `done` (a SynthesizeResponse).",
        },
    },
)
async def synthesize_stream(
    req: SynthesizeRequest,
    service: Service = Depends(the_service),  # noqa: B008
) -> StreamingResponse:
    """The same as /v1/synthesize, as server-sent events while the work goes on."""
    service.admit(req)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for event in service.run(req):
                yield f"event: {event.name}\ndata: {json.dumps(event.data)}\n\n".encode()
        except RunStop as exc:  # the LLM server refuses every request (key, model)
            error = {"error": "llm_failed", "detail": redact(str(exc))}
            yield f"event: error\ndata: {json.dumps(error)}\n\n".encode()
        except Exception as exc:  # the stream has started: report in-band
            log.error("stream_failed", error=redact(repr(exc)))
            yield f"event: error\ndata: {json.dumps({'error': 'internal'})}\n\n".encode()

    return StreamingResponse(events(), media_type="text/event-stream")


@synthesis.get(
    "/v1/feedback/{reference_id}",
    response_model=FeedbackView,
    responses={404: {"model": ErrorBody}, 401: ERRORS[401]},
)
async def get_feedback(
    reference_id: str,
    service: Service = Depends(the_service),  # noqa: B008
) -> FeedbackView:
    """The cached reference-level feedback for a reference id (this model, these prompts)."""
    feedback = await service.cache.by_reference_id(reference_id)
    if feedback is None:
        raise HTTPException(404, f"no cached feedback for reference {reference_id!r}")
    return FeedbackView(
        reference_id=reference_id,
        model=service.settings.model,
        prompt_version=service.cache.prompt_version,
        feedback=feedback,
    )


@operations.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@operations.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(service: Service = Depends(the_service)) -> Any:  # noqa: B008
    """An LLM endpoint passes the pre-flight check: it answers, takes the key and
    serves the model (any one of several endpoints; the judge's too, if its own)."""
    ready, problems = readiness(await service.readiness_checks())
    if ready:
        return Health(status="ok", detail=redact(problems) if problems else None)
    return JSONResponse(
        Health(status="unavailable", detail=redact(problems or "")).model_dump(), 503
    )


@operations.get(
    "/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}}
)
async def prometheus(service: Service = Depends(the_service)) -> Response:  # noqa: B008
    """Prometheus metrics: requests, latency, LLM calls, tokens, cache hits, in flight."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
