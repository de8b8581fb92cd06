"""The runner: references through the graph, what finishes into the run's store.

One :class:`Runner` whatever the store (``graph.store``): slots take references from the
store's claims, run each thread on the store's checkpoints, write the closed candidates and
the feedback to its ledgers as they land, and reconcile the thread's final state with them
(whatever a crash left between checkpoint and ledger is written then; ids make it
exactly-once). A failure that stops the run (the server gone or refusing, a full disk)
stops every slot; a bug in one reference fails that reference only.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

import structlog

from dataset.ledger import LedgerError
from dataset.quality import QualityGate
from graph.progress import Progress
from graph.store import Ending, Held, Store, default_workers, storage_error, target_reached
from llm.stops import RunStop
from state.logs import redact
from state.records import (
    Candidate,
    Judgement,
    Provenance,
    Reference,
    ReferenceDone,
    ReferenceFeedback,
    Sample,
    Usage,
)
from state.settings import RefedSettings

log = structlog.get_logger("refed.run")

MANIFEST_EVERY = 1.0
"""Seconds between run.json rewrites while running (resume reads the ledgers, not these)."""


def reference_score(values: dict[str, Any]) -> float | None:
    """The mean score the judge gave the reference pair itself (anchored bars), if any."""
    found = values.get("reference_judgement")
    return None if found is None else Judgement.model_validate(found).mean


class Runner:
    """Runs references through the graph and writes what finishes to the store."""

    def __init__(self, store: Store, settings: RefedSettings) -> None:
        self.store = store
        self.folder = store.folder
        self.manifest = store.manifest
        self.settings = settings
        self.failed: list[str] = []
        self.progress: Progress | None = None
        self.gate: QualityGate | None = None
        """Near-duplicate and decontamination filters (dataset/quality), from the store."""
        self.held = Held()
        self._manifest_at = 0.0

    def _provenance(self, ref: Reference) -> Provenance:
        return Provenance(
            run_id=self.manifest.run_id,
            model=self.manifest.model,
            feedback_mode=self.settings.feedback_mode,
            prompt_versions=self.manifest.prompt_versions,
            reference_instruction=ref.instruction,
            reference_response=ref.response,
        )

    def _write_candidates(self, ref: Reference, candidates: list[Any]) -> None:
        fresh = [Candidate.model_validate(c) for c in candidates]
        fresh = [c for c in fresh if c.sample_id not in self.folder.sample_ids]
        if not fresh:
            return
        prov = self._provenance(ref)
        samples = [Sample(**c.model_dump(), provenance=prov) for c in fresh]
        if self.gate is not None:  # accepted ones it drops become rejected, same ids
            samples = self.gate.screen(samples)
        accepted, rejected = self.folder.add_samples(samples)
        if self.progress is not None and (accepted or rejected):
            self.progress.update(accepted=accepted, rejected=rejected)

    def target_reached(self) -> bool:
        return target_reached(self.settings, self.folder)

    def on_update(self, ref: Reference, node: str, update: dict[str, Any]) -> None:
        """Write what a finished graph step produced: closed candidates, the feedback."""
        if update.get("candidates"):
            self._write_candidates(ref, update["candidates"])
        elif node == "feedback_distillation" and update.get("feedback"):
            self.folder.add_feedback(ReferenceFeedback.model_validate(update["feedback"]))

    def finish(self, ref: Reference, values: dict[str, Any]) -> None:
        """Reconcile the thread's final state with the ledgers and mark the reference done."""
        # Whatever the checkpoint holds that the ledgers do not (a crash between
        # checkpoint and ledger write) is written now; ids make it exactly-once.
        candidates = [Candidate.model_validate(c) for c in values.get("candidates", [])]
        self._write_candidates(ref, candidates)
        if values.get("feedback") is not None:
            self.folder.add_feedback(ReferenceFeedback.model_validate(values["feedback"]))
        usage = Usage.model_validate(values.get("usage") or {})
        for c in candidates:
            usage += c.usage
        gated = self.folder.gated_ids  # accepted by the judge, turned away by the gate
        accepted = sum(c.status == "accepted" and c.sample_id not in gated for c in candidates)
        self.folder.mark_done(
            ReferenceDone(
                reference_id=ref.id,
                accepted=accepted,
                rejected=len(candidates) - accepted,
                usage=usage,
                error=values.get("error"),
                reference_score=reference_score(values),
                dropped_instructions=values.get("dropped_instructions") or [],
            )
        )
        if values.get("error"):
            log.warning("reference_error", reference_id=ref.id, error=values["error"])

    async def work(self, ref: Reference) -> None:
        """One reference: its thread, then the ledgers; a bug fails this reference only."""
        try:
            values = await self.store.execute(
                ref, lambda node, update: self.on_update(ref, node, update)
            )
            self.finish(ref, values)
            await self.store.commit(ref.id, self.gate)
        except (asyncio.CancelledError, RunStop, LedgerError):
            raise  # the whole run stops: the server is gone or refuses, or the disk is full
        except Exception as exc:  # a bug: keep the others going
            if storage_error(exc):
                raise LedgerError(f"cannot write to {self.folder.path}: {exc}") from exc
            self.failed.append(ref.id)
            log.error(
                "reference_crashed", reference_id=ref.id, error=redact(repr(exc)), exc_info=True
            )
        finally:
            if self.progress is not None:
                self.progress.update(refs=1)
            now = time.monotonic()
            if now - self._manifest_at >= MANIFEST_EVERY:  # and always at the end
                self._manifest_at = now
                self.manifest.stats = self.folder.stats(self.store.requests())
                try:
                    self.folder.write_manifest(self.manifest)
                except OSError as exc:
                    raise LedgerError(
                        f"cannot write {self.folder.manifest_path}: {exc.strerror or exc}"
                    ) from exc

    async def slot(self) -> None:
        """One reference at a time, claimed from the store, until none is left."""
        while not self.target_reached():
            ref = await self.store.claim()
            if ref is None:
                return
            task = asyncio.create_task(self.work(ref))
            self.held.tasks[ref.id] = task
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                lost = ref.id in self.held.lost
                if not lost or (current is not None and current.cancelling()):
                    raise
                log.warning("reference_lease_lost", reference_id=ref.id)
            finally:
                self.held.tasks.pop(ref.id, None)
                self.held.lost.discard(ref.id)

    async def run(self, references: Sequence[Reference]) -> None:
        # The gate's index is rebuilt from the seeds and the ledgers on every start.
        self.gate = await self.store.open_gate(references)
        todo = await self.store.plan(references)
        skipped = len(references) - todo
        if skipped:
            log.info("resume_skip_done", references=skipped)
            print(f"resuming: {skipped} references already done, {todo} to go", file=sys.stderr)
        self.progress = Progress(todo, self.store.meter())
        try:
            n = min(default_workers(self.settings), max(1, todo))
            async with asyncio.TaskGroup() as tg:
                slots = [tg.create_task(self.slot()) for _ in range(n)]
                tg.create_task(self.store.keep_claims(slots, self.held))
        except ExceptionGroup as group:  # the first run-stopping error, alone
            fatal = group.subgroup((RunStop, LedgerError))
            if fatal is None:
                raise
            first: BaseException = fatal
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        finally:
            self.progress.close()

    def write_quality(self) -> None:
        """Write ``quality.json`` with the gate's final counts (the run ends or stops)."""
        if self.gate is None:
            return
        try:
            self.gate.write_summary()
        except OSError as exc:  # a full disk: the ledgers hold the numbers anyway
            log.error("quality_summary_not_written", error=str(exc))


async def drive(runner: Runner, references: Sequence[Reference]) -> bool:
    """``runner.run`` with the store's record kept true to how it ended; True when
    interrupted."""
    interrupted = False
    stopped_by: BaseException | None = None
    try:
        await runner.run(references)
    except asyncio.CancelledError:
        interrupted = True
        raise
    except (RunStop, LedgerError) as exc:
        stopped_by = exc
        raise
    finally:
        runner.write_quality()
        await runner.store.finish(
            Ending(
                references=len(references),
                requests=runner.store.requests(),
                failed=bool(runner.failed),
                interrupted=interrupted,
                stopped_by=stopped_by,
            )
        )
    return interrupted
