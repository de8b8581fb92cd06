"""``python -m serve``: the synthesis service on uvicorn, with the batch job's settings."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from graph.endpoint import llm_endpoint
from graph.logs import add_secret, configure_logging
from serve.app import create_app
from state.settings import RefedSettings, add_settings_flags, settings_from_args

SERVICE_FLAGS = (
    "base_url",
    "model",
    "api_key",
    "concurrency",
    "timeout",
    "max_retries",
    "feedback_mode",
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
    "log_level",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__)
    add_settings_flags(parser, only=SERVICE_FLAGS)
    settings: RefedSettings = settings_from_args(parser.parse_args(argv))
    add_secret(settings.api_key.get_secret_value())
    if settings.service_token is not None:
        add_secret(settings.service_token.get_secret_value())
    configure_logging(None, level=settings.log_level, console_level=settings.log_level)
    with llm_endpoint(settings, settings.service_db.parent) as (base_url, model):
        app = create_app(settings, base_url=base_url, model=model)
        print(
            f"refed service on http://{settings.host}:{settings.port} (LLM: {base_url})",
            file=sys.stderr,
            flush=True,
        )
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            timeout_graceful_shutdown=30,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
