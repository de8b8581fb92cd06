"""Append-only JSONL ledgers that survive ``kill -9``.

Each record is one line written with a single ``write`` and flushed, so a killed
process leaves at most one torn last line; opening a ledger cuts such a line off
(logged) before appending. A write the disk refuses part-way (full, over quota or
the file size limit) is cut back to the last whole record before the error is
raised, so the ledger never holds half a record. Nothing else is ever rewritten.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import structlog
from pydantic import BaseModel

log = structlog.get_logger("refed.ledger")
M = TypeVar("M", bound=BaseModel)


class LedgerError(RuntimeError):
    """A ledger or store could not be written; ``advice`` says what the user can do."""

    advice = "free some space (or fix the permissions), then rerun the same command to resume"


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._repair()

    def _repair(self) -> None:
        """Cut a torn last line (no newline, or not JSON) left by a crash."""
        if not self.path.exists():
            return
        with self.path.open("rb+") as fh:
            data = fh.read()
            if not data:
                return
            end = len(data)
            if not data.endswith(b"\n"):
                end = data.rfind(b"\n") + 1
            else:
                last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
                try:
                    json.loads(data[last_start:])
                except ValueError:
                    end = last_start
            if end != len(data):
                log.warning("ledger_torn_line_dropped", file=str(self.path), bytes=len(data) - end)
                fh.truncate(end)

    def read(self, model: type[M]) -> Iterator[M]:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield model.model_validate_json(line)
                    except ValueError as exc:
                        raise LedgerError(f"{self.path} line {number}: {exc}") from exc

    def append(self, records: Iterable[BaseModel]) -> int:
        payload = b"".join(r.model_dump_json().encode() + b"\n" for r in records)
        if not payload:
            return 0
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise LedgerError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        view = memoryview(payload)
        try:
            while view:  # unbuffered: a short write is finished here or undone below
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._undo(size)
            raise LedgerError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        return payload.count(b"\n")

    def _undo(self, size: int) -> None:
        """Cut what a failed append wrote (shrinking a file needs no new space)."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:  # the torn tail is then cut when the ledger is next opened
            log.error("ledger_undo_failed", file=str(self.path), error=str(exc))

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
