"""``python -m graph.run`` (``refed run``): synthesize a dataset from seed files, resumably.

The command line over :func:`graph.batch.run_batch`: flags to settings, the seeds read,
the LLM endpoint found (or the embedded server started), graph processes forked, then the
run on its own event loop with Ctrl-C handling; a one-line error or the run's summary.
Rerunning the same command on the same ``--out`` resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import prompts
from dataset.embeddings import BaseModelMissing
from dataset.ledger import LedgerError
from dataset.quality.benchmarks import BenchmarkError, load_benchmarks
from dataset.relevance import require_model
from dataset.runfolder import RunConfigMismatch
from dataset.seeds import SeedError, read_seeds
from graph.batch import RunResult, run_batch
from graph.procpool import discard, new_event_loop, planned_processes, prefork
from graph.store import stopped_line
from llm.circuit import CircuitOpen
from llm.factory import llm_endpoint
from llm.stops import PreflightFailed, RunStop
from state.logs import add_secret, configure_logging, redact
from state.profile import ProfileError
from state.settings import RefedSettings, add_settings_flags, settings_from_args

STOP_GRACE = 8.0
"""Seconds the first Ctrl-C/SIGTERM gives the run to cancel and save; then it exits at once."""
EXIT_SERVER_UNAVAILABLE = 75
"""Exit status when the circuit breaker stopped the run (sysexits' EX_TEMPFAIL: try later)."""


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
    bar = result.manifest.fingerprint.get("judge_bar")
    scores = s.reference_scores
    anchor = (
        f" (its references scored {scores['min']:.2f}-{scores['max']:.2f}, mean "
        f"{scores['mean']:.2f})"
        if scores
        else ""
    )
    lines.append(
        f"judge bar: {bar}{anchor}   instructions dropped by checks: {s.instructions_dropped}"
    )
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
        require_model(settings.relevance_min)
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
        with llm_endpoint(settings, settings.out) as settings:
            main_task = loop.create_task(run_batch(settings, references, forked=forked))
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
