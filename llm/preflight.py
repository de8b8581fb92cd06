"""The check before the first reference: every endpoint lists its models, with ours.

``GET {base_url}/models`` on each endpoint of the run (the generator's, and the judge's
when it has its own endpoint or model), all at once:

- nothing answers (refused, unknown host, no connection within
  :data:`CONNECT_TIMEOUT` seconds): ``unreachable``;
- 401 or 403: ``refused`` (the API key);
- another status, or a body that is not a model list: ``answer``;
- the list lacks the model: ``model``, with the models it serves.

A server that accepts the connection but is slow to answer is waited for (up to the
request timeout): it is alive. ``graph.run`` stops before its first reference when a
check fails (:class:`~llm.stops.PreflightFailed`, exit status 2); the service runs
the same check at start-up and on ``/readyz``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import structlog

from llm.stops import KEY_ADVICE, PreflightFailed, served_list
from state.settings import RefedSettings

log = structlog.get_logger("refed.preflight")

CONNECT_TIMEOUT = 4.0
"""Seconds to open a connection to an endpoint before calling it unreachable."""

Problem = Literal["unreachable", "refused", "answer", "model"]


@dataclass(frozen=True)
class Target:
    """An endpoint and the model the run asks it for."""

    url: str
    model: str
    role: str = "generator"


@dataclass(frozen=True)
class EndpointCheck:
    target: Target
    problem: Problem | None
    detail: str
    served: list[str] | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.problem is None

    def message(self) -> str:
        """One line for the user: what is wrong with which URL, and what to do."""
        url, model = self.target.url, self.target.model
        flag = "--judge-model" if self.target.role == "judge" else "--model"
        if self.problem is None:
            return f"{url} serves {model!r}"
        if self.problem == "unreachable":
            return (
                f"cannot reach the LLM server at {url} ({self.detail}): is it running, "
                "and is the URL right?"
            )
        if self.problem == "refused":
            return f"the LLM server at {url} refused the API key ({self.detail}): {KEY_ADVICE}"
        if self.problem == "answer":
            return (
                f"the LLM server at {url} answered GET {url}/models with {self.detail}: is the "
                "URL right (it usually ends in /v1)?"
            )
        text = f"the LLM server at {url} does not serve model {model!r}; {served_list(self.served)}"
        return text + (f" (set {flag} to one of them)" if self.served else "")


def _scrub(text: str, api_key: str) -> str:
    return text.replace(api_key, "***") if len(api_key) >= 4 and api_key != "EMPTY" else text


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _model_ids(data: Any) -> list[str] | None:
    """The ids of an OpenAI model list, or None when ``data`` is not one."""
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return None
    return [str(r["id"]) for r in rows if isinstance(r, dict) and "id" in r]


async def _get_models(
    url: str, api_key: str, *, connect_timeout: float, timeout: float
) -> tuple[int, Any, str]:
    """(status, the parsed body or None, the body's first characters) of GET url/models."""
    limits = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
    async with (
        aiohttp.ClientSession(timeout=limits, headers=_headers(api_key)) as session,
        session.get(url.rstrip("/") + "/models") as resp,
    ):
        raw = await resp.read()
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            body = None
        return resp.status, body, raw[:200].decode("utf-8", "replace")


async def served_models(url: str, api_key: str, *, timeout: float = 5.0) -> list[str] | None:
    """The models ``url`` lists, or None when it does not say (any error)."""
    try:
        status, body, _ = await _get_models(
            url, api_key, connect_timeout=min(timeout, CONNECT_TIMEOUT), timeout=timeout
        )
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    return _model_ids(body) if status == 200 else None


def _error_text(body: Any, head: str) -> str:
    err = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("message", err))[:200]
    if err is not None:
        return str(err)[:200]
    return head.strip()[:200]


async def check_endpoint(
    target: Target,
    api_key: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    timeout: float = 120.0,
) -> EndpointCheck:
    """GET ``target.url``/models and judge the answer (see the module docstring)."""
    started = time.monotonic()

    def result(problem: Problem | None, detail: str, served: list[str] | None) -> EndpointCheck:
        return EndpointCheck(
            target, problem, _scrub(detail, api_key), served, time.monotonic() - started
        )

    try:
        status, body, head = await _get_models(
            target.url, api_key, connect_timeout=connect_timeout, timeout=timeout
        )
    except aiohttp.ClientConnectorError as exc:
        return result("unreachable", f"{type(exc).__name__}: {exc}", None)
    except TimeoutError:  # aiohttp's connection timeout is a TimeoutError too
        took = time.monotonic() - started
        what = "no connection" if took < timeout - 0.5 else "no answer"
        return result("unreachable", f"{what} in {took:.0f} s", None)
    except (aiohttp.ClientError, OSError) as exc:
        return result("unreachable", f"{type(exc).__name__}: {exc}", None)
    if status in (401, 403):
        return result("refused", f"HTTP {status}: {_error_text(body, head)}", None)
    served = _model_ids(body) if status == 200 else None
    if served is None:
        return result("answer", f"HTTP {status}: {_error_text(body, head)}", None)
    if target.model not in served:
        return result("model", "", served)
    return result(None, "", served)


def targets(settings: RefedSettings) -> list[Target]:
    """Every (endpoint, model) a run calls: the generator's, then the judge's own ones."""
    out = [Target(url, settings.model) for url in settings.base_urls]
    if settings.judge_base_url is not None or settings.judge_model is not None:
        judge = settings.judge_model or settings.model
        for url in settings.judge_base_urls or settings.base_urls:
            if Target(url, judge) not in out and Target(url, judge, "judge") not in out:
                out.append(Target(url, judge, "judge"))
    return out


async def check_all(
    checks: Sequence[Target],
    api_key: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    timeout: float = 120.0,
) -> list[EndpointCheck]:
    """Every target checked at once."""
    return list(
        await asyncio.gather(
            *(
                check_endpoint(t, api_key, connect_timeout=connect_timeout, timeout=timeout)
                for t in checks
            )
        )
    )


async def preflight(
    checks: Sequence[Target], api_key: str, *, timeout: float = 120.0
) -> list[EndpointCheck]:
    """Check every target; raise :class:`PreflightFailed` naming each one that failed."""
    results = await check_all(checks, api_key, timeout=timeout)
    failed = [r for r in results if not r.ok]
    for r in results:
        log.info(
            "preflight",
            endpoint=r.target.url,
            model=r.target.model,
            role=r.target.role,
            ok=r.ok,
            problem=r.problem,
            seconds=round(r.seconds, 2),
        )
    if failed:
        raise PreflightFailed([r.message() for r in failed])
    return results
