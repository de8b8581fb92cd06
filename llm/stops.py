"""Failures no candidate is to blame for: they stop the whole run.

A node records an :class:`~llm.client.LLMError` on its candidate and the others go on.
The exceptions here are not ``LLMError``: no node catches them, they go up through the
graph, and the runner stops the run with :attr:`RunStop.status` in ``run.json`` and
:attr:`RunStop.exit_code` (the service answers the one request with a 502 instead).

- :class:`ServerRefused`: the server answers, but refuses every request: the API key
  (401, 403) or the model (404: the models it does serve are listed);
- :class:`PreflightFailed`: the check before the first reference found an endpoint
  unreachable, refusing the key, or not serving the model (``llm.preflight``);
- ``llm.circuit.CircuitOpen``: the server has answered nothing for too long.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

REFUSING_STATUSES = frozenset({401, 403, 404})
"""Statuses no retry and no other candidate can get past: the run stops on them."""

KEY_ADVICE = "set REFED_API_KEY (or OPENAI_API_KEY, or --api-key) to a key this server accepts"


class RunStop(Exception):
    """An LLM failure that stops the run (see the module docstring)."""

    status: ClassVar[str] = "stopped"
    """``run.json``'s status for a run this stopped."""
    exit_code: ClassVar[int] = 2


def served_list(models: Sequence[str] | None) -> str:
    """The models a server lists, for a message."""
    if models is None:
        return "it did not say which models it serves"
    if not models:
        return "it serves no model"
    return "it serves: " + ", ".join(models)


class ServerRefused(RunStop):
    """The server refused a request for a reason every request shares: key or model."""

    status = "server_refused"

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        url: str | None = None,
        model: str | None = None,
        served: Sequence[str] | None = None,
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.url = url
        self.model = model
        self.served = list(served) if served is not None else None
        where = f"the LLM server at {url}" if url else "the LLM server"
        if status_code in (401, 403):
            text = f"{where} refused the API key ({message}): {KEY_ADVICE}"
        else:
            what = f"model {model!r}" if model else "the model"
            text = f"{where} does not serve {what} ({message}); {served_list(self.served)}"
            if self.served:
                text += " (set --model to one of them)"
        super().__init__(text)


class PreflightFailed(RunStop):
    """An endpoint failed the check before the first reference (one line per endpoint)."""

    status = "preflight_failed"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))
