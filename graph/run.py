"""``python -m graph.run``: synthesize a dataset from seed files, resumably.

One LangGraph thread per reference (``thread_id = run_id:reference_id``), a bounded
pool of references in flight, and append-only ledgers in the run folder. Rerunning
the same command on the same ``--out`` resumes: finished references are skipped,
half-done ones continue from their last checkpoint, and samples are written once
(by id), whatever moment the previous process died at.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import math
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

import prompts
from dataset.embeddings import BaseModelMissing, base_folder
from dataset.ledger import LedgerError
from dataset.quality import QualityGate
from dataset.quality.benchmarks import BenchmarkError, load_benchmarks
from dataset.runfolder import Manifest, RunConfigMismatch, RunFolder
from dataset.seeds import SeedError, read_seeds
from graph.builder import compile_graph
from graph.checkpoint import sqlite_saver
from graph.progress import Progress
from llm.balancer import endpoint_client, endpoint_stats
from llm.circuit import CircuitBreaker, CircuitOpen
from llm.client import LLMClient, Meter, register_client, unregister_client
from llm.endpoint import llm_endpoint
from llm.preflight import preflight, targets
from llm.stops import PreflightFailed, RunStop
from state.context import RefedContext
from state.graph_state import ReferenceState
from state.logs import add_secret, configure_logging, redact
from state.profile import ProfileError
from state.records import (
    Candidate,
    Judgement,
    Provenance,
    Reference,
    ReferenceDone,
    ReferenceFeedback,
    RunStats,
    Sample,
    Usage,
)
from state.settings import RefedSettings, add_settings_flags, settings_from_args

log = structlog.get_logger("refed.run")

MANIFEST_EVERY = 1.0
"""Seconds between run.json rewrites while running (resume reads the ledgers, not these)."""
STOP_GRACE = 8.0
"""Seconds the first Ctrl-C/SIGTERM gives the run to cancel and save; then it exits at once."""
EXIT_SERVER_UNAVAILABLE = 75
"""Exit status when the circuit breaker stopped the run (sysexits' EX_TEMPFAIL: try later)."""


@dataclass
class RunResult:
    folder: Path
    manifest: Manifest
    stats: RunStats
    failed_references: list[str]
    interrupted: bool = False
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    """Per-endpoint counters of the generator's client (in flight, limit, calls, ...)."""


def default_workers(settings: RefedSettings) -> int:
    """References in flight: enough candidates to keep ``concurrency`` busy on each endpoint."""
    if settings.workers:
        return settings.workers
    endpoints = max(1, len(settings.base_urls))
    return max(2, math.ceil(2 * settings.concurrency * endpoints / settings.per_reference))


async def run_thread(
    app: CompiledStateGraph[ReferenceState, RefedContext, ReferenceState, ReferenceState],
    ref: Reference,
    run_id: str,
    context: RefedContext,
    durability: Any,
    on_update: Callable[[str, dict[str, Any]], None],
) -> dict[str, Any]:
    """Run or resume ``ref``'s thread (``run_id:reference_id``) to its end.

    ``on_update(node, update)`` sees each finished step that changed the thread's state
    as it lands (not a candidate step that only passed the candidate on); returns the
    thread's final state values (a finished thread: at once).
    """
    cfg: RunnableConfig = {"configurable": {"thread_id": f"{run_id}:{ref.id}"}}
    snapshot = await app.aget_state(cfg)
    if snapshot.values and not snapshot.next:
        return dict(snapshot.values)
    start = None if snapshot.next else ReferenceState(reference=ref)
    if start is None:
        log.info("reference_resumed", reference_id=ref.id, next=list(snapshot.next))
    async for chunk in app.astream(
        start, cfg, context=context, stream_mode="updates", durability=durability
    ):
        for node, update in chunk.items():
            if update:
                on_update(node, update)
    return dict((await app.aget_state(cfg)).values)


def check_relevance_model(settings: RefedSettings) -> None:
    """With a relevance check, its embedding model must be installed: say so before the run."""
    if settings.relevance_min is not None:
        try:
            base_folder()
        except BaseModelMissing as exc:
            raise BaseModelMissing(
                f"relevance_min is set, but {exc}; or unset relevance_min"
            ) from None


def reference_score(values: dict[str, Any]) -> float | None:
    """The mean score the judge gave the reference pair itself (anchored bars), if any."""
    found = values.get("reference_judgement")
    return None if found is None else Judgement.model_validate(found).mean


class Runner:
    """Runs references through the graph and writes what finishes to the run folder."""

    def __init__(
        self,
        app: CompiledStateGraph[ReferenceState, RefedContext, ReferenceState, ReferenceState]
        | None,
        folder: RunFolder,
        manifest: Manifest,
        context: RefedContext,
        settings: RefedSettings,
        client: LLMClient | None,
        judge_client: LLMClient | None = None,
    ) -> None:
        self.app = app
        self.folder = folder
        self.manifest = manifest
        self.context = context
        self.settings = settings
        self.client = client
        self.judge_client = judge_client
        self.failed: list[str] = []
        self.progress: Progress | None = None
        self.gate: QualityGate | None = None
        """Near-duplicate and decontamination filters, built by ``run`` (dataset/quality)."""
        self._manifest_at = 0.0

    def _provenance(self, ref: Reference) -> Provenance:
        return Provenance(
            run_id=self.manifest.run_id,
            model=self.manifest.model,
            feedback_mode=self.context.feedback_mode,
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

    def _target_reached(self) -> bool:
        target = self.settings.samples
        return target is not None and self.folder.accepted >= target

    def on_update(self, ref: Reference, node: str, update: dict[str, Any]) -> None:
        """Write what a finished graph step produced: closed candidates, the feedback."""
        if update.get("candidates"):
            self._write_candidates(ref, update["candidates"])
        elif node == "feedback_distillation" and update.get("feedback"):
            self.folder.add_feedback(ReferenceFeedback.model_validate(update["feedback"]))

    async def execute(self, ref: Reference) -> dict[str, Any]:
        """Run (or resume) the reference's thread; its final state values."""
        assert self.app is not None
        return await run_thread(
            self.app,
            ref,
            self.manifest.run_id,
            self.context,
            self.settings.durability,
            lambda node, update: self.on_update(ref, node, update),
        )

    async def process(self, ref: Reference) -> None:
        self.finish(ref, await self.execute(ref))

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

    def requests(self) -> int:
        """LLM requests made by this process, the judge's own client included."""
        return self.meter().requests + (
            self.judge_client.meter.requests if self.judge_client is not None else 0
        )

    def meter(self) -> Meter:
        """Live counters of the generator's client (what the progress line shows)."""
        assert self.client is not None
        return self.client.meter

    async def worker(self, queue: asyncio.Queue[Reference]) -> None:
        while not self._target_reached():
            try:
                ref = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                await self.process(ref)
            except (asyncio.CancelledError, RunStop, LedgerError):
                raise  # the whole run stops: the server is gone or refuses, or the disk is full
            except Exception as exc:  # a bug: keep the others going
                if _storage_error(exc):
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
                    self.manifest.stats = self.folder.stats(self.requests())
                    try:
                        self.folder.write_manifest(self.manifest)
                    except OSError as exc:
                        raise LedgerError(
                            f"cannot write {self.folder.manifest_path}: {exc.strerror or exc}"
                        ) from exc

    async def run(self, references: list[Reference]) -> None:
        # The gate's index is rebuilt from the seeds and samples.jsonl on every start.
        self.gate = QualityGate.for_run(self.settings, self.folder, references)
        todo = [r for r in references if r.id not in self.folder.done]
        skipped = len(references) - len(todo)
        if skipped:
            log.info("resume_skip_done", references=skipped)
            print(
                f"resuming: {skipped} references already done, {len(todo)} to go", file=sys.stderr
            )
        queue: asyncio.Queue[Reference] = asyncio.Queue()
        for ref in todo:
            queue.put_nowait(ref)
        self.progress = Progress(len(todo), self.meter())
        try:
            n = min(default_workers(self.settings), max(1, len(todo)))
            async with asyncio.TaskGroup() as tg:
                for _ in range(n):
                    tg.create_task(self.worker(queue))
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


def _storage_error(exc: BaseException) -> bool:
    """A write the disk refused (full, read-only, over quota or size limit)."""
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        return True
    text = str(exc).lower()
    return isinstance(exc, sqlite3.Error) and any(
        mark in text for mark in ("disk is full", "disk i/o error", "readonly database")
    )


_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES})


def _client_from_settings(settings: RefedSettings, base_url: str, model: str) -> LLMClient:
    """``base_url``: one endpoint, or several separated by commas (balanced, see llm.balancer)."""
    return endpoint_client(
        base_url,
        model,
        settings.api_key.get_secret_value(),
        timeout=settings.timeout,
        concurrency=settings.concurrency,
        adaptive=not settings.fixed_concurrency,
        max_retries=settings.max_retries,
    )


def _judge_client(
    settings: RefedSettings, base_url: str | None, key: str
) -> tuple[str | None, LLMClient | None]:
    """The judge's own client (own endpoint or model, own limiter), registered; or none."""
    if settings.judge_base_url is None and settings.judge_model is None:
        return None, None
    judge_url = settings.judge_base_url or base_url
    if judge_url is None:
        raise ValueError("the judge needs judge_base_url or base_url")
    client = endpoint_client(
        judge_url,
        settings.judge_model or settings.model,
        settings.api_key.get_secret_value(),
        timeout=settings.timeout,
        concurrency=settings.judge_concurrency or settings.concurrency,
        adaptive=not settings.fixed_concurrency,
        max_retries=settings.max_retries,
        name="judge",
    )
    register_client(key + ":judge", client)
    return key + ":judge", client


def wire_clients(
    settings: RefedSettings, base_url: str | None, client: LLMClient, run_id: str
) -> tuple[str, str | None, LLMClient | None, RefedContext]:
    """Register the run's clients, give them one circuit breaker, build the run's context.

    Returns the generator's client key, the judge's (None: the generator's client) and
    its client, and the context the graph runs with. Unregister both keys at the end.
    """
    key = f"run:{run_id}:{id(client)}"
    register_client(key, client)
    judge_key, judge_client = _judge_client(settings, base_url, key)
    circuit = CircuitBreaker(settings.circuit_open_after) if settings.circuit_open_after else None
    for used in (client, judge_client):  # one breaker for the run, whoever calls
        if used is not None and used.circuit is None:
            used.circuit = circuit
    context = RefedContext.from_settings(
        settings,
        base_url=base_url,
        run_id=run_id,
        client_key=key,
        judge_client_key=judge_key,
    )
    return key, judge_key, judge_client, context


async def release_clients(
    key: str | None,
    judge_key: str | None,
    client: LLMClient | None,
    judge_client: LLMClient | None,
) -> None:
    """Undo :func:`wire_clients`: unregister both keys and close both clients."""
    if key is not None:
        unregister_client(key)
    if judge_key is not None:
        unregister_client(judge_key)
    for used in (client, judge_client):
        if used is not None:
            await used.aclose()


async def run_batch(
    settings: RefedSettings,
    references: list[Reference],
    *,
    base_url: str | None = None,
    client: LLMClient | None = None,
    forked: list[Any] | None = None,
) -> RunResult:
    """Run (or resume) a batch over ``references`` with an LLM at ``base_url`` or ``client``.

    ``forked``: graph processes forked ahead (graph.procpool.prefork) for a run with
    several; any it lacks are started here.
    """
    if client is None and (base_url or settings.base_url):
        await check_endpoints(settings, base_url or settings.base_url or "")
    if settings.store:  # Postgres: several workers on one run (graph/pgstore.py)
        from graph.pgstore import run_batch_pg

        return await run_batch_pg(settings, references, base_url=base_url, client=client)
    base_url = base_url or settings.base_url
    if client is None and base_url is None:
        raise ValueError("run_batch needs a base_url or a client")
    folder, manifest = RunFolder.open(
        settings, prompts.versions(), model=settings.model, base_url=base_url
    )
    try:
        if manifest.processes > 1:
            from graph.procpool import run_in_processes

            if client is not None or base_url is None:
                raise ValueError("a run with several processes needs a base_url, not a client")
            return await run_in_processes(
                settings, references, folder, manifest, base_url, forked or []
            )
        if client is None:
            assert base_url is not None
            client = _client_from_settings(settings, base_url, settings.model)
        return await _run_here(settings, references, folder, manifest, base_url, client)
    finally:
        folder.close()


async def check_endpoints(settings: RefedSettings, base_url: str) -> None:
    """The pre-flight check of every endpoint the run will call (``llm.preflight``):
    raises :class:`~llm.stops.PreflightFailed` before the run folder is touched."""
    await preflight(
        targets(base_url, settings.model, settings.judge_base_url, settings.judge_model),
        settings.api_key.get_secret_value(),
        timeout=settings.timeout,
    )


async def _run_here(
    settings: RefedSettings,
    references: list[Reference],
    folder: RunFolder,
    manifest: Manifest,
    base_url: str | None,
    client: LLMClient,
) -> RunResult:
    """The run in this process: the graph, its checkpoints and the ledgers together."""
    key, judge_key, judge_client, context = wire_clients(
        settings, base_url, client, manifest.run_id
    )
    try:
        async with sqlite_saver(folder.checkpoints) as saver:
            runner = Runner(
                compile_graph(saver), folder, manifest, context, settings, client, judge_client
            )
            interrupted = await drive(runner, references)
    finally:
        await release_clients(key, judge_key, client, judge_client)
    return RunResult(
        settings.out, manifest, manifest.stats, runner.failed, interrupted, endpoint_stats(client)
    )


def run_status(interrupted: bool, done: bool, stopped_by: BaseException | None) -> str:
    """run.json's status for a run that ended so (``done``: all of it, or its target)."""
    if stopped_by is not None:  # a RunStop's (server_unavailable, server_refused) or a disk's
        return getattr(stopped_by, "status", "storage_error")
    if interrupted:
        return "interrupted"
    return "finished" if done else "incomplete"


async def drive(runner: Runner, references: list[Reference]) -> bool:
    """``runner.run`` with run.json kept true to how it ended; True when interrupted."""
    folder, manifest = runner.folder, runner.manifest
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
        manifest.stats = folder.stats(runner.requests())
        done = len(folder.done) >= len(references) and not runner.failed
        manifest.status = run_status(interrupted, done or runner._target_reached(), stopped_by)
        try:
            folder.write_manifest(manifest)
        except OSError as exc:  # a full disk: keep the error that stopped the run
            log.error("manifest_not_written", error=str(exc))
            if stopped_by is None:
                raise LedgerError(
                    f"cannot write {folder.manifest_path}: {exc.strerror or exc}"
                ) from exc
    return interrupted


def stopped_line(exc: LedgerError, who: str) -> str:
    """The one line a run stopped by ``exc`` ends with (a database error's lines joined)."""
    return (
        f"error: {' '.join(redact(str(exc)).split())}. {who}; what was written before is "
        f"intact: {exc.advice}."
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (less CPU per LLM call), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def parse_args(argv: list[str] | None = None) -> RefedSettings:
    parser = argparse.ArgumentParser(
        prog="python -m graph.run",
        description="Synthesize a judged instruction dataset from seed references "
        "(reference-level feedback). Rerun the same command to resume.",
    )
    add_settings_flags(parser)
    return settings_from_args(parser.parse_args(argv))


def _summary(result: RunResult) -> str:
    s = result.stats
    lines = [
        f"run folder: {result.folder}",
        f"references done: {s.references_done}   accepted: {s.accepted}   "
        f"rejected/failed: {s.rejected}",
        f"LLM calls: {s.usage.calls} (feedback {s.usage.feedback_calls})   tokens: "
        f"{s.usage.prompt_tokens} prompt, {s.usage.completion_tokens} completion",
    ]
    if s.llm_calls_per_accepted is not None:
        lines.append(
            f"per accepted sample: {s.llm_calls_per_accepted:.2f} calls, "
            f"{s.feedback_calls_per_accepted:.3f} feedback calls"
        )
    if len(result.endpoints) > 1 or any(e["failures"] for e in result.endpoints):
        for e in result.endpoints:
            lines.append(
                f"endpoint {e['base_url']}: {e['calls']} calls, {e['failures']} failed, "
                f"limit {e['limit']:g} of {e['cap']} (peak {e['peak_in_flight']} in flight)"
                + (", ejected" if e["ejected"] else "")
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    add_secret(settings.api_key.get_secret_value())
    if not settings.seeds:
        print("error: --seeds is required (a seed file, folder or hf:NAME)", file=sys.stderr)
        return 2
    try:
        settings = prompts.resolve_profile(settings)
        check_relevance_model(settings)
    except (ProfileError, BaseModelMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.profile:
        print(f"profile: {settings.profile}", file=sys.stderr)
    try:
        settings.out.mkdir(parents=True, exist_ok=True)
        configure_logging(settings.out / "log.jsonl", level=settings.log_level)
    except OSError as exc:
        print(f"error: cannot use the run folder {settings.out}: {exc}", file=sys.stderr)
        return 1
    from graph.procpool import discard, planned_processes, prefork

    # Graph processes are forked first, with no thread or event loop yet in this process.
    processes = planned_processes(settings)
    forked = prefork(processes) if processes > 1 and not settings.store else []
    try:
        return _main(settings, forked)
    finally:
        discard(forked)


def _main(settings: RefedSettings, forked: list[Any]) -> int:
    assert settings.seeds is not None  # main checked it
    try:
        references = read_seeds(
            settings.seeds, on_bad_record=settings.on_bad_record, limit=settings.limit
        )
    except SeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:  # a bad benchmark file fails now, before the run folder records its path
        load_benchmarks(settings.decontaminate)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(references)} references from {settings.seeds}", file=sys.stderr)

    loop = new_event_loop()
    main_task: asyncio.Task[RunResult] | None = None
    stops = 0

    def on_signal(signum: int) -> None:
        nonlocal stops
        stops += 1
        if stops == 1 and main_task is not None:
            print(
                "\nstopping: finished samples are saved; rerun the same command to resume "
                "(Ctrl-C again to stop at once)",
                file=sys.stderr,
            )
            main_task.cancel()
            loop.call_later(STOP_GRACE, force_stop)
        else:
            raise SystemExit(130)

    def dump_tasks() -> None:
        """SIGUSR1: print where every task of the run is waiting (for a run that seems stuck)."""
        for task in asyncio.all_tasks(loop):
            task.print_stack(limit=12, file=sys.stderr)

    def force_stop() -> None:
        print(f"still stopping after {STOP_GRACE:g} s: stopped at once", file=sys.stderr)
        raise SystemExit(130)

    try:
        with llm_endpoint(settings, settings.out) as (base_url, model):
            settings = settings.model_copy(update={"model": model})
            main_task = loop.create_task(
                run_batch(settings, references, base_url=base_url, forked=forked)
            )
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal, sig)
            loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
            try:
                result = loop.run_until_complete(main_task)
            except asyncio.CancelledError:
                print(
                    f"interrupted. Resume with the same command (run folder {settings.out}).",
                    file=sys.stderr,
                )
                return 130
    except RunConfigMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CircuitOpen as exc:
        print(
            f"error: {redact(str(exc))}; stopped. Finished samples are saved: rerun the same "
            f"command once the server is back to resume (run folder {settings.out}).",
            file=sys.stderr,
        )
        return EXIT_SERVER_UNAVAILABLE
    except PreflightFailed as exc:
        for problem in exc.problems:
            print(f"error: {redact(problem)}", file=sys.stderr)
        print("nothing was run: fix the above and run the same command again", file=sys.stderr)
        return exc.exit_code
    except RunStop as exc:
        print(
            f"error: {redact(str(exc))}. The run stopped; finished samples are saved: rerun "
            f"the same command once this is fixed to resume (run folder {settings.out}).",
            file=sys.stderr,
        )
        return exc.exit_code
    except LedgerError as exc:
        print(stopped_line(exc, "The run stopped"), file=sys.stderr)
        return 1
    except (PermissionError, OSError) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    print(_summary(result), file=sys.stderr)
    if result.failed_references:
        print(
            f"{len(result.failed_references)} references failed (see log.jsonl); rerun to "
            "retry them",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
