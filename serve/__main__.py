"""``python -m serve``: the synthesis service on uvicorn, with the batch job's settings."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

import uvicorn

import prompts
from dataset.embeddings import BaseModelMissing
from dataset.relevance import require_model
from llm.factory import llm_endpoint
from serve.app import create_app
from state.logs import add_secret, configure_logging
from state.profile import ProfileError
from state.settings import (
    ENDPOINT_FLAGS,
    RefedSettings,
    add_settings_flags,
    settings_from_args,
)

SERVICE_FLAGS = (
    *ENDPOINT_FLAGS,
    "feedback_mode",
    "profile",
    "judge_bar",
    "max_revisions",
    "temperature",
    "max_tokens",
    "seed",
    "host",
    "port",
    "service_token",
    "service_db",
    "max_body_bytes",
    "max_samples_per_request",
    "max_in_flight_requests",
    "shutdown_grace",
    "log_level",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__)
    add_settings_flags(parser, only=SERVICE_FLAGS)
    settings: RefedSettings = settings_from_args(parser.parse_args(argv))
    try:  # the same profile as the batch job: the embedded model's when none is given
        settings = prompts.resolve_profile(settings)
        require_model(settings.relevance_min)
    except (ProfileError, BaseModelMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    add_secret(settings.api_key.get_secret_value())
    if settings.service_token is not None:
        add_secret(settings.service_token.get_secret_value())
    configure_logging(None, level=settings.log_level, console_level=settings.log_level)
    with llm_endpoint(settings, settings.service_db.parent) as settings:
        app = create_app(settings, base_url=settings.base_url or "", model=settings.model)
        print(
            f"refed service on http://{settings.host}:{settings.port} (LLM: {settings.base_url})",
            file=sys.stderr,
            flush=True,
        )
        # uvicorn drains on SIGTERM (no new connections, in-flight requests get
        # shutdown_grace seconds, then are cancelled), then raises the signal again with
        # the handler it found: this one makes a drained SIGTERM an ordinary exit 0 and
        # lets llm_endpoint stop an embedded server on the way out.
        previous = signal.signal(signal.SIGTERM, _drained)
        try:
            uvicorn.run(
                app,
                host=settings.host,
                port=settings.port,
                log_level="warning",
                timeout_graceful_shutdown=settings.shutdown_grace,
            )
        finally:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _drained(signum: int, frame: FrameType | None) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""


if __name__ == "__main__":
    sys.exit(main())
