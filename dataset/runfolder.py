"""A run folder: ledgers, run.json, schemas, checkpoints, and what resume needs from them.

samples.jsonl      accepted samples (Sample)
rejected.jsonl     rejected or failed candidates, with the reason (Sample)
feedback.jsonl     one ReferenceFeedback per reference (reference mode)
references.jsonl   one ReferenceDone per finished reference
run.json           config, model, prompt versions, counters
schema.json        JSON schemas of the records above
checkpoints.sqlite LangGraph checkpoints, one thread per reference (checkpoints-K.sqlite:
                   process K's, with --processes)
log.jsonl          structlog JSON lines
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, Field

from dataset.ledger import Ledger, LedgerError
from state.records import (
    ReferenceDone,
    ReferenceFeedback,
    RunStats,
    Sample,
    Usage,
)
from state.settings import RefedSettings

log = structlog.get_logger("refed.runfolder")


class RunConfigMismatch(RuntimeError):
    pass


class Manifest(BaseModel):
    """run.json."""

    run_id: str
    created: str
    updated: str
    status: str = "running"
    seeds: str | None
    model: str
    base_url: str | None
    fingerprint: dict[str, Any]
    prompt_versions: dict[str, str]
    settings: dict[str, Any] = Field(default_factory=dict)
    processes: int = 1
    """Graph processes the run was started with: its checkpoints are sharded by it."""
    stats: RunStats = Field(default_factory=RunStats)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_manifest(
    settings: RefedSettings,
    prompt_versions: dict[str, str],
    *,
    model: str,
    base_url: str | None,
    processes: int = 1,
) -> Manifest:
    """The manifest of a run that starts now, with a fresh run id."""
    return Manifest(
        run_id=secrets.token_hex(4),
        created=_now(),
        updated=_now(),
        seeds=settings.seeds,
        model=model,
        base_url=base_url,
        fingerprint=settings.fingerprint(),
        prompt_versions=prompt_versions,
        settings=settings.public_dump(),
        processes=processes,
    )


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples = Ledger(path / "samples.jsonl")
        self.rejected = Ledger(path / "rejected.jsonl")
        self.feedback = Ledger(path / "feedback.jsonl")
        self.references = Ledger(path / "references.jsonl")
        self.manifest_path = path / "run.json"
        self.checkpoints = path / "checkpoints.sqlite"
        """Checkpoints of a one-process run, and of a sharded run's first process."""
        self.log_file = path / "log.jsonl"
        # What the ledgers already hold (resume): loaded once, kept up to date.
        self.sample_ids: set[str] = set()
        self.gated_ids: set[str] = set()
        """Samples the judge accepted and the quality gate turned away (``filter`` set)."""
        self.feedback_ids: set[str] = set()
        self.done: dict[str, ReferenceDone] = {}
        self.accepted = 0
        self.rejected_count = 0
        self.usage = Usage()
        """Usage of the finished references, kept up to date (stats is O(1), not O(refs))."""
        self._pending_done: list[ReferenceDone] = []
        self._sync_lock = threading.Lock()
        self._sync_wanted = threading.Condition(self._sync_lock)
        self._flush_lock = threading.Lock()
        self._syncer: threading.Thread | None = None
        self._closing = False

    # --- opening ------------------------------------------------------------------
    def checkpoint_shard(self, index: int) -> Path:
        """The checkpoint file of graph process ``index`` (0: ``checkpoints.sqlite``)."""
        return self.checkpoints if index == 0 else self.path / f"checkpoints-{index}.sqlite"

    @classmethod
    def open(
        cls,
        settings: RefedSettings,
        prompt_versions: dict[str, str],
        *,
        model: str,
        base_url: str | None,
        processes: int = 1,
    ) -> tuple[RunFolder, Manifest]:
        """Create or resume the run folder; refuse a different config unless ``force_new``.

        ``processes``: the graph processes of a new run (a run keeps the number it began
        with: its checkpoints are sharded by it)."""
        path = settings.out
        existing = path / "run.json"
        if existing.exists() and settings.force_new:
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            moved = path.with_name(f"{path.name}.replaced-{stamp}")
            path.rename(moved)
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"run folder {path} is not writable")
        folder = cls(path)
        fingerprint = settings.fingerprint()
        if folder.manifest_path.exists():
            manifest = Manifest.model_validate_json(folder.manifest_path.read_text())
            wanted = {**fingerprint, "prompt_versions": prompt_versions, "seeds": settings.seeds}
            have = {
                **manifest.fingerprint,
                "prompt_versions": manifest.prompt_versions,
                "seeds": manifest.seeds,
            }
            diffs = [k for k in wanted if wanted[k] != have.get(k)]
            if diffs:
                lines = ", ".join(f"{k}: {have.get(k)!r} → {wanted[k]!r}" for k in diffs)
                raise RunConfigMismatch(
                    f"{path} holds a run with a different configuration ({lines}). "
                    "Use the same settings to resume, another --out, or --force-new to "
                    "start over (the old folder is kept, renamed)."
                )
            if settings.processes is not None and settings.processes != manifest.processes:
                raise RunConfigMismatch(
                    f"{path} holds a run started with --processes {manifest.processes} (its "
                    f"checkpoints are sharded by it); resume it with --processes "
                    f"{manifest.processes} or without the flag, or use another --out."
                )
            manifest.status = "running"
            manifest.base_url = base_url
            manifest.settings = settings.public_dump()
        else:
            manifest = new_manifest(
                settings, prompt_versions, model=model, base_url=base_url, processes=processes
            )
        folder.load()
        folder.write_schemas()
        folder.write_manifest(manifest)
        return folder, manifest

    def load(self) -> None:
        for sample in self.samples.read(Sample):
            self.sample_ids.add(sample.sample_id)
            self.accepted += 1
        for sample in self.rejected.read(Sample):
            self.sample_ids.add(sample.sample_id)
            self.rejected_count += 1
            if sample.filter is not None and sample.filter.is_gate:
                self.gated_ids.add(sample.sample_id)
        for fb in self.feedback.read(ReferenceFeedback):
            self.feedback_ids.add(fb.reference_id)
        for done in self.references.read(ReferenceDone):
            if done.reference_id not in self.done:
                self.usage += done.usage
            self.done[done.reference_id] = done

    def write_schemas(self) -> None:
        schemas = {
            m.__name__: m.model_json_schema()
            for m in (Sample, ReferenceFeedback, ReferenceDone, Manifest)
        }
        target = self.path / "schema.json"
        if not target.exists():
            _atomic_write(target, json.dumps(schemas, indent=2))

    # --- writing ------------------------------------------------------------------
    def add_samples(self, samples: list[Sample]) -> tuple[int, int]:
        """Append samples not yet in the ledgers; returns (accepted, rejected) written."""
        fresh = [s for s in samples if s.sample_id not in self.sample_ids]
        accepted = [s for s in fresh if s.status == "accepted"]
        rejected = [s for s in fresh if s.status != "accepted"]
        self.samples.append(accepted)
        self.rejected.append(rejected)
        self.sample_ids.update(s.sample_id for s in fresh)
        self.gated_ids.update(
            s.sample_id for s in rejected if s.filter is not None and s.filter.is_gate
        )
        self.accepted += len(accepted)
        self.rejected_count += len(rejected)
        return len(accepted), len(rejected)

    def add_feedback(self, feedback: ReferenceFeedback) -> None:
        if feedback.reference_id not in self.feedback_ids:
            self.feedback.append([feedback])
            self.feedback_ids.add(feedback.reference_id)

    def mark_done(self, done: ReferenceDone) -> None:
        """Record a finished reference; a syncer thread writes its marker durably.

        The thread fsyncs the sample ledgers, then appends the markers waiting at that
        moment to references.jsonl and fsyncs it, so a marker is never on disk before its
        samples. The event loop never waits for the disk (an fsync here takes 4 ms idle and
        far longer while the checkpoint database streams writes). A crash can lose the
        markers not yet written: those references are finished threads, so resume only
        reconciles them (no LLM call) and writes the markers then.
        """
        if done.reference_id in self.done:
            return
        self._done(done)
        with self._sync_lock:
            self._pending_done.append(done)
            if self._syncer is None:
                self._syncer = threading.Thread(
                    target=self._sync_loop, name="refed-ledger-sync", daemon=True
                )
                self._syncer.start()
            self._sync_wanted.notify()

    def _sync_loop(self) -> None:
        while True:
            with self._sync_lock:
                while not self._pending_done and not self._closing:
                    self._sync_wanted.wait()
                if not self._pending_done and self._closing:
                    return
            try:
                self.flush_done()
            except (LedgerError, OSError) as exc:
                # Markers are a shortcut for resume (which reconciles finished threads
                # without them); the run sees the disk error at its next ledger write.
                log.error("reference_markers_not_written", error=str(exc))

    def flush_done(self) -> None:
        """Sync the sample ledgers, then append and sync the markers waiting now."""
        with self._flush_lock:
            with self._sync_lock:
                batch, self._pending_done = self._pending_done, []
            if not batch:
                return
            self._sync_samples()
            self.references.append(batch)
            self.references.sync()

    def _sync_samples(self) -> None:
        for ledger in (self.samples, self.rejected, self.feedback):
            ledger.sync()

    def _done(self, done: ReferenceDone) -> None:
        self.done[done.reference_id] = done
        self.usage += done.usage

    def stats(self, process_calls: int = 0) -> RunStats:
        return (
            RunStats(
                references_done=len(self.done),
                accepted=self.accepted,
                rejected=self.rejected_count,
                usage=self.usage,
                process_calls=process_calls,
            )
            .with_references(self.done.values())
            .finish()
        )

    def write_manifest(self, manifest: Manifest) -> None:
        manifest.updated = _now()
        _atomic_write(self.manifest_path, manifest.model_dump_json(indent=2))

    def close(self) -> None:
        """Write the waiting markers, stop the syncer thread, close the ledgers."""
        with self._sync_lock:
            self._closing = True
            self._sync_wanted.notify()
        if self._syncer is not None:
            self._syncer.join()
            self._syncer = None
        try:
            self.flush_done()
        except (LedgerError, OSError) as exc:
            log.error("reference_markers_not_written", error=str(exc))
        for ledger in (self.samples, self.rejected, self.feedback, self.references):
            ledger.close()


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file, then rename it over ``path``: all or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk leaves the old file and no debris
        raise
