"""Progress for long runs: a bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

import structlog
from tqdm import tqdm

from llm.client import Meter

log = structlog.get_logger("refed.progress")


class Progress:
    def __init__(
        self, total: int, meter: Meter, *, every: float = 10.0, tty: bool | None = None
    ) -> None:
        self.meter = meter
        self.every = every
        self.last = 0.0
        self.accepted = 0
        self.rejected = 0
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar: tqdm[Any] | None = (
            tqdm(total=total, unit="ref", dynamic_ncols=True, file=sys.stderr) if self.tty else None
        )
        self.total = total
        self.done = 0

    def _fields(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "llm_calls": self.meter.requests,
            "in_flight": self.meter.in_flight,
            "tok_s": round(self.meter.tokens_per_second(), 1),
        }

    def update(self, *, refs: int = 0, accepted: int = 0, rejected: int = 0) -> None:
        self.done += refs
        self.accepted += accepted
        self.rejected += rejected
        if self.bar is not None:
            self.bar.update(refs)
            self.bar.set_postfix(self._fields(), refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.every or (refs and self.done == self.total):
            self.last = now
            fields = self._fields()
            log.info("progress", references=f"{self.done}/{self.total}", **fields)
            line = " ".join(f"{k}={v}" for k, v in fields.items())
            print(f"progress references={self.done}/{self.total} {line}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
