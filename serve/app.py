"""The service's app factory: a :class:`~serve.service.Service` (its clients from the
client factory, the graph, the cache), the routers of :mod:`serve.routes`, the body
limit, the error bodies and the request metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from llm.client import LLMClient
from serve.limits import BodyLimit
from serve.routes import operations, synthesis
from serve.service import Service
from state.api import ErrorBody
from state.settings import RefedSettings

_ERROR_NAMES = {
    401: "unauthorized",
    404: "not_found",
    413: "body_too_large",
    429: "too_many_requests",
    503: "unavailable",
}


def create_app(
    settings: RefedSettings,
    *,
    base_url: str,
    model: str,
    client: LLMClient | None = None,
) -> FastAPI:
    """The service app on ``base_url`` (one endpoint or several, comma-separated) and
    ``model``; ``client`` replaces the one the client factory makes (tests)."""
    service = Service(settings.model_copy(update={"base_url": base_url, "model": model}), client)
    app = FastAPI(
        title="Refed",
        version="0.1.0",
        summary="On-demand synthesis of judged instruction data from a reference pair, "
        "with reference-level feedback.",
        lifespan=service.lifespan,
    )
    app.state.service = service
    app.state.metrics = service.metrics
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.exception_handler(HTTPException)(_http_error)
    app.exception_handler(RequestValidationError)(_invalid)
    app.middleware("http")(_counter(service))
    app.include_router(synthesis)
    app.include_router(operations)
    return app


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    body = ErrorBody(error=_ERROR_NAMES.get(exc.status_code, "error"), detail=str(exc.detail))
    return JSONResponse(body.model_dump(), exc.status_code, headers=exc.headers)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [
        {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
        for e in exc.errors()
    ]
    return JSONResponse(ErrorBody(error="invalid_request", detail=detail).model_dump(), 422)


def _counter(
    service: Service,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """HTTP middleware counting requests and their latency per route."""

    async def count(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        route = "/v1/feedback/{id}" if path.startswith("/v1/feedback/") else path
        started = time.perf_counter()
        response = await call_next(request)
        service.metrics.requests.labels(route, str(response.status_code)).inc()
        service.metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    return count
