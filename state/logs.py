"""structlog set-up: JSON lines to the run's log file; warnings (or all, verbose) to stderr."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import IO, Any

import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_secrets: set[str] = set()


def add_secret(value: str | None) -> None:
    """Never print this value: it is replaced by *** in every log line."""
    if value and value not in ("EMPTY", "") and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


class _Sink:
    """The last processor: writes the event as JSON to the file, and a short line to stderr."""

    def __init__(self, file: IO[str] | None, console_level: int) -> None:
        self.file = file
        self.console_level = console_level

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        line = redact(json.dumps(event, default=str, ensure_ascii=False))
        if self.file is not None:
            try:
                self.file.write(line + "\n")
                self.file.flush()
            except OSError as exc:  # a full disk must not turn every log call into a crash
                self.file = None
                print(
                    redact(f"[error] log file not writable, logging to stderr: {exc}"),
                    file=sys.stderr,
                )
        if _LEVELS.get(event.get("level", "info"), 20) >= self.console_level:
            extras = " ".join(
                f"{k}={v}" for k, v in event.items() if k not in ("event", "level", "timestamp")
            )
            print(redact(f"[{event.get('level')}] {event.get('event')} {extras}"), file=sys.stderr)
        raise structlog.DropEvent


def configure_logging(
    log_file: Path | None = None, *, level: str = "info", console_level: str = "warning"
) -> None:
    file = log_file.open("a", encoding="utf-8") if log_file is not None else None
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _Sink(file, _LEVELS.get(console_level, 30)),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, 20)),
        cache_logger_on_first_use=False,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
