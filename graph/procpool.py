"""Several graph processes for one run (``--processes N``): the graph on more cores.

One Python process spends a few milliseconds of CPU per LLM call in LangGraph's engine,
the checkpointer and the HTTP client; with hundreds of requests in flight that CPU, not
the server, is the limit (BENCHMARKS.md). With ``--processes N`` the run's process keeps
the seeds, the ledgers, the quality gate and the progress, and starts N children
(``python -m graph.procpool``), each running reference threads on its own checkpoint file
(``RunFolder.checkpoint_shard``) with its share of the in-flight budget.

The wire is JSON lines over the children's stdin and stdout:

    parent → child   {"settings": …, "api_key": …, "run_id": …, "shard": K, …}  once, then
                     {"ref": Reference}                                           per reference
    child → parent   {"kind": "ready"}
                     {"kind": "update", "ref": ID, "node": NAME, "update": …}    a finished step
                     {"kind": "final", "ref": ID, "values": …, "endpoints": …}   the thread's end
                     {"kind": "crashed", "ref": ID, "error": …}                  a bug, this ref
                     {"kind": "fatal", "what": "circuit"|"refused"|"storage", …}  the run stops
                     every message also carries "meter": the child's live counters.

A reference already started in an earlier process goes back to the child that owns its
checkpoint file; fresh ones go to whichever child has room. A child stops when its stdin
closes (the parent finished, was stopped, or was killed), so no child outlives its run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import pydantic_core
import structlog

from dataset.ledger import LedgerError
from dataset.runfolder import Manifest, RunFolder
from graph.builder import compile_graph
from graph.checkpoint import sqlite_saver
from graph.store import OnUpdate, Store, default_workers, run_thread, storage_error
from llm.circuit import CircuitOpen
from llm.client import Meter
from llm.factory import RunClients, endpoint_stats, run_clients
from llm.stops import ServerRefused
from state.logs import add_secret, configure_logging
from state.records import Reference
from state.settings import RefedSettings

log = structlog.get_logger("refed.procpool")

LINE_LIMIT = 1 << 26
"""Longest JSON line either side reads (a reference's final state with all its candidates)."""
CLOSE_GRACE = 5.0
"""Seconds a child gets to exit after its stdin closes before it is killed."""
PER_PROCESS_IN_FLIGHT = 32
"""Requests in flight per graph process by default. At about 2.5 ms of CPU per call one
process is most of a core busy from 64 in flight at 200 ms, and two processes measured
1.10x of ideal there against 1.14x for one (python -m bench.overhead --clients refed-p1
refed-p2)."""


class GraphProcessDied(LedgerError):
    """A graph process ended while the run needed it (killed, out of memory, a crash)."""

    advice = "finished samples are saved; rerun the same command to resume"
    status = "process_died"


class ReferenceCrashed(RuntimeError):
    """The child's graph raised for one reference (a bug); the others go on."""


def child_settings(settings: RefedSettings, processes: int) -> RefedSettings:
    """One child's settings: its share of the in-flight budget and of the references in flight."""
    share: dict[str, Any] = {
        "concurrency": math.ceil(settings.concurrency / processes),
        "workers": math.ceil(default_workers(settings) / processes),
        "processes": 1,
    }
    if settings.judge_concurrency:
        share["judge_concurrency"] = math.ceil(settings.judge_concurrency / processes)
    return settings.model_copy(update=share)


def started_threads(folder: RunFolder, processes: int, run_id: str) -> dict[str, int]:
    """Reference id -> the shard whose checkpoint file already holds its thread."""
    prefix = f"{run_id}:"
    found: dict[str, int] = {}
    for shard in range(processes):
        path = folder.checkpoint_shard(shard)
        if not path.exists():
            continue
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
        try:
            rows = conn.execute("SELECT DISTINCT thread_id FROM checkpoints").fetchall()
        except sqlite3.OperationalError:  # created, tables not yet
            rows = []
        finally:
            conn.close()
        for (thread_id,) in rows:
            if thread_id.startswith(prefix):
                found[thread_id[len(prefix) :]] = shard
    return found


@dataclass
class Forked:
    """A child forked before the run's event loop existed, waiting for its config."""

    pid: int
    to_child: int
    from_child: int


def prefork(n: int) -> list[Forked]:
    """Fork ``n`` graph processes now, while this process has no threads and no event loop.

    A forked child starts with every module already imported (no second start-up of a
    second or more); it waits for its config on a pipe and exits when the pipe closes,
    so children never used (an error before the run) simply go away.
    """
    children: list[Forked] = []
    if threading.active_count() > 1:  # forking a threaded process is unsafe: start them later
        return children
    for _ in range(n):
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                for other in children:  # the pipes of its elder siblings are not its own
                    os.close(other.to_child)
                    os.close(other.from_child)
                os.close(down_w)
                os.close(up_r)
                code = _child_main(os.fdopen(down_r, "rb"), os.fdopen(up_w, "wb", buffering=0))
            finally:
                os._exit(code)
        os.close(down_r)
        os.close(up_w)
        children.append(Forked(pid, down_w, up_r))
    return children


def discard(children: list[Forked]) -> None:
    """Close unused forked children's pipes (they exit) and reap them."""
    for child in children:
        for fd in (child.to_child, child.from_child):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
    for child in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, 0)


def default_processes(settings: RefedSettings) -> int:
    """Graph processes for a new run without ``--processes``: one per
    :data:`PER_PROCESS_IN_FLIGHT` requests in flight, at most one per usable core."""
    if settings.store:
        return 1  # Postgres runs scale by workers (graph/pgstore.py)
    budget = settings.concurrency * max(1, len(settings.base_urls))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, budget // PER_PROCESS_IN_FLIGHT))


def planned_processes(settings: RefedSettings) -> int:
    """The graph processes this run will have: the flag, else the run folder's, else the
    default for its in-flight budget (:func:`default_processes`)."""
    if settings.processes:
        return settings.processes
    path = settings.out / "run.json"
    if settings.force_new or not path.exists():
        return default_processes(settings)
    try:
        return int(json.loads(path.read_text()).get("processes", 1))
    except (OSError, ValueError, TypeError):
        return 1  # RunFolder.open reports a broken run.json


class _Pipes:
    """A child's two pipes and its pid, the same to the parent whether forked or started."""

    def __init__(
        self,
        pid: int,
        reader: asyncio.StreamReader,
        write: Callable[[bytes], None],
        close_input: Callable[[], None],
        wait: Callable[[], Awaitable[int]],
    ) -> None:
        self.pid, self.reader, self.write = pid, reader, write
        self.close_input, self.wait = close_input, wait

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    @classmethod
    async def exec(cls) -> _Pipes:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "graph.procpool",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
            start_new_session=True,  # a terminal's Ctrl-C goes to the parent, which stops them
        )
        assert proc.stdin is not None and proc.stdout is not None
        stdin = proc.stdin
        return cls(proc.pid, proc.stdout, stdin.write, stdin.close, proc.wait)

    @classmethod
    async def adopt(cls, child: Forked) -> _Pipes:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        up, down = os.fdopen(child.from_child, "rb"), os.fdopen(child.to_child, "wb", buffering=0)
        child.from_child = child.to_child = -1  # the transports own them now
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), up)
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, down)
        exited: asyncio.Future[int] | None = None

        async def wait() -> int:
            nonlocal exited
            if exited is None:  # reaped once, in a thread (the loop does not watch it)
                exited = loop.run_in_executor(None, _exit_status, child.pid)
            return await asyncio.shield(exited)

        return cls(child.pid, reader, transport.write, transport.close, wait)


def _exit_status(pid: int) -> int:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return -1
    return os.waitstatus_to_exitcode(status)


class GraphProcess:
    """The parent's handle on one child: send references, receive their steps and ends."""

    def __init__(self, shard: int, pipes: _Pipes) -> None:
        self.shard = shard
        self.pipes = pipes
        self.meter: dict[str, Any] = {}
        """The child's latest counters (requests, tokens, in flight)."""
        self.endpoints: list[dict[str, Any]] = []
        """The child's per-endpoint counters, as of the last reference it finished."""
        self._pending: dict[str, tuple[OnUpdate, asyncio.Future[dict[str, Any]]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._dead: BaseException | None = None

    @classmethod
    async def start(
        cls, shard: int, config: dict[str, Any], forked: Forked | None = None
    ) -> GraphProcess:
        """Hand ``config`` to a forked child, or start one, and wait until it is ready."""
        pipes = await (_Pipes.adopt(forked) if forked is not None else _Pipes.exec())
        self = cls(shard, pipes)
        pipes.write(_line({**config, "shard": shard}))
        first = await pipes.reader.readline()
        if not first:
            code = await pipes.wait()
            raise GraphProcessDied(f"graph process {shard} exited with status {code} at start")
        msg = json.loads(first)
        if msg.get("kind") != "ready":
            raise GraphProcessDied(f"graph process {shard} did not start: {msg.get('error', msg)}")
        self._reader = asyncio.create_task(self._read(), name=f"graph-process-{shard}")
        return self

    async def run(self, ref: Reference, on_update: OnUpdate) -> dict[str, Any]:
        """Run ``ref``'s thread in the child; ``on_update`` sees its steps; its final values."""
        if self._dead is not None:
            raise self._dead
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref.id] = (on_update, future)
        self.pipes.write(_line({"ref": ref}))
        try:
            return await future
        finally:
            self._pending.pop(ref.id, None)

    async def _read(self) -> None:
        try:
            while line := await self.pipes.reader.readline():
                self._handle(json.loads(line))
        except (ValueError, asyncio.LimitOverrunError) as exc:
            self._fail_all(GraphProcessDied(f"graph process {self.shard} sent a bad line: {exc}"))
            self.pipes.kill()
            return
        code = await self.pipes.wait()
        self._fail_all(
            GraphProcessDied(f"graph process {self.shard} (pid {self.pipes.pid}) exited ({code})")
        )

    def _handle(self, msg: dict[str, Any]) -> None:
        self.meter = msg.get("meter", self.meter)
        self.endpoints = msg.get("endpoints", self.endpoints)
        kind = msg["kind"]
        if kind == "fatal":
            error, what = msg["error"], msg["what"]
            if what == "circuit":
                self._fail_all(CircuitOpen(msg.get("failing_for", 0.0), error))
            elif what == "refused":
                self._fail_all(ServerRefused(error, msg["message"], **msg["refused"]))
            elif what == "storage":
                self._fail_all(LedgerError(error))
            else:
                self._fail_all(GraphProcessDied(f"graph process {self.shard}: {error}"))
            return
        pending = self._pending.get(msg["ref"])
        if pending is None or pending[1].done():
            return
        on_update, future = pending
        if kind == "update":
            try:
                on_update(msg["node"], msg["update"])
            except Exception as exc:  # a ledger write failed: this reference stops here
                future.set_exception(exc)
        elif kind == "final":
            future.set_result(msg["values"])
        elif kind == "crashed":
            future.set_exception(ReferenceCrashed(msg["error"]))

    def _fail_all(self, exc: BaseException) -> None:
        if self._dead is None:
            self._dead = exc
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(exc)

    async def close(self) -> None:
        """Close the child's input (it stops), wait a moment, then kill it."""
        self.pipes.close_input()
        try:
            await asyncio.wait_for(asyncio.shield(self.pipes.wait()), CLOSE_GRACE)
        except (TimeoutError, asyncio.CancelledError):
            self.pipes.kill()
            await self.pipes.wait()
        finally:
            if self._reader is not None:
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._reader


def merged_meter(processes: list[GraphProcess], into: Meter) -> Meter:
    """Sum the children's latest counters into ``into`` (the parent's progress reads it)."""
    for name in ("requests", "failed", "prompt_tokens", "completion_tokens", "in_flight"):
        setattr(into, name, sum(p.meter.get(name, 0) for p in processes))
    return into


def merged_endpoints(processes: list[GraphProcess]) -> list[dict[str, Any]]:
    """The children's per-endpoint counters added up per endpoint."""
    out: dict[str, dict[str, Any]] = {}
    for p in processes:
        for e in p.endpoints:
            have = out.get(e["base_url"])
            if have is None:
                out[e["base_url"]] = dict(e)
                continue
            for name in ("calls", "failures", "in_flight", "limit", "cap", "peak_in_flight"):
                if name in e:
                    have[name] = have.get(name, 0) + e[name]
            have["ejected"] = bool(have.get("ejected")) or bool(e.get("ejected"))
    return list(out.values())


class ProcessStore(Store):
    """The run folder's ledgers here, the reference threads in graph processes, each on its
    own checkpoint file."""

    def __init__(
        self,
        settings: RefedSettings,
        folder: RunFolder,
        manifest: Manifest,
        processes: list[GraphProcess],
        started: dict[str, int],
    ) -> None:
        super().__init__(settings, folder, manifest)
        self.processes = processes
        self.started = started
        self._meter = Meter()
        self._load = [0] * len(processes)

    async def execute(self, ref: Reference, on_update: OnUpdate) -> dict[str, Any]:
        """The process whose checkpoint file holds ``ref``'s thread runs it; a fresh
        reference goes to the least loaded one."""
        shard = self.started.get(ref.id)
        if shard is None:
            shard = min(range(len(self.processes)), key=self._load.__getitem__)
        self._load[shard] += 1
        try:
            return await self.processes[shard].run(ref, on_update)
        finally:
            self._load[shard] -= 1
            self.meter()

    def meter(self) -> Meter:
        return merged_meter(self.processes, self._meter)

    def requests(self) -> int:
        return self.meter().requests

    def endpoints(self) -> list[dict[str, Any]]:
        return merged_endpoints(self.processes)


@contextlib.asynccontextmanager
async def process_store(
    settings: RefedSettings, folder: RunFolder, manifest: Manifest, forked: list[Forked]
) -> AsyncIterator[ProcessStore]:
    """The store of a run with ``manifest.processes`` graph processes (forked ahead where
    ``forked`` has them, else started now); they are closed at the end."""
    n = manifest.processes
    config = {
        "settings": child_settings(settings, n).model_dump(mode="json"),
        "api_key": settings.api_key.get_secret_value(),
        "run_id": manifest.run_id,
    }
    started = started_threads(folder, n, manifest.run_id)
    processes: list[GraphProcess] = []
    try:
        # (a child left behind by a Ctrl-C here exits when this process does: its stdin closes)
        ahead: list[Forked | None] = [*forked[:n], *[None] * (n - len(forked))]
        started_up = await asyncio.gather(
            *(GraphProcess.start(k, config, ahead[k]) for k in range(n)), return_exceptions=True
        )
        processes.extend(p for p in started_up if isinstance(p, GraphProcess))
        for failure in started_up:
            if isinstance(failure, BaseException):
                raise failure
        yield ProcessStore(settings, folder, manifest, processes, started)
    finally:
        await asyncio.gather(*(p.close() for p in processes), return_exceptions=True)


def _line(msg: dict[str, Any]) -> bytes:
    return pydantic_core.to_json(msg) + b"\n"


# ---------------------------------------------------------------------------- the child


def _meter(clients: RunClients) -> dict[str, Any]:
    m = clients.generator.meter
    return {
        "requests": clients.requests,
        "failed": m.failed,
        "prompt_tokens": m.prompt_tokens,
        "completion_tokens": m.completion_tokens,
        "in_flight": m.in_flight,
    }


async def _serve(config: dict[str, Any], inp: BinaryIO, out: BinaryIO) -> None:
    api_key = config["api_key"]
    settings = RefedSettings.model_validate({**config["settings"], "api_key": api_key})
    add_secret(api_key)
    configure_logging(settings.out / "log.jsonl", level=settings.log_level)
    run_id, shard = config["run_id"], config["shard"]
    structlog.contextvars.bind_contextvars(graph_process=shard)  # on every log line
    clients = run_clients(settings, run_id)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), inp)
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, out)

    def send(msg: dict[str, Any]) -> None:
        msg["meter"] = _meter(clients)
        transport.write(_line(msg))

    saver_path = RunFolder(settings.out).checkpoint_shard(shard)
    try:
        async with sqlite_saver(saver_path) as saver:
            app = compile_graph(saver)

            async def handle(ref: Reference) -> None:
                def on_update(node: str, update: dict[str, Any]) -> None:
                    send({"kind": "update", "ref": ref.id, "node": node, "update": update})

                try:
                    values = await run_thread(
                        app, ref, run_id, clients.context, settings.durability, on_update
                    )
                except CircuitOpen as exc:
                    send(
                        {
                            "kind": "fatal",
                            "what": "circuit",
                            "failing_for": exc.failing_for,
                            "error": exc.last_error,
                        }
                    )
                except ServerRefused as exc:
                    refused = {"url": exc.url, "model": exc.model, "served": exc.served}
                    send(
                        {
                            "kind": "fatal",
                            "what": "refused",
                            "error": exc.status_code,
                            "message": exc.message,
                            "refused": refused,
                        }
                    )
                except Exception as exc:
                    if storage_error(exc):
                        error = f"cannot write {saver_path}: {exc}"
                        send({"kind": "fatal", "what": "storage", "error": error})
                    else:
                        log.error("reference_crashed", reference_id=ref.id, exc_info=True)
                        send({"kind": "crashed", "ref": ref.id, "error": repr(exc)})
                else:  # the per-endpoint counters only here: the summary needs the last
                    send(
                        {
                            "kind": "final",
                            "ref": ref.id,
                            "values": values,
                            "endpoints": endpoint_stats(clients.generator),
                        }
                    )

            send({"kind": "ready"})
            tasks: set[asyncio.Task[None]] = set()
            while line := await reader.readline():
                ref = Reference.model_validate(json.loads(line)["ref"])
                task = asyncio.create_task(handle(ref))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            for task in tasks:  # stdin closed: the run is over or stopping
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await clients.aclose()
        transport.close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (less CPU per LLM call), else asyncio's: the
    run's process and each graph process run on one."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _child_main(inp: BinaryIO, out: BinaryIO) -> int:
    """A graph process: read the config, serve references until the input closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    first = inp.readline()  # the parent sends nothing more before "ready": no read-ahead
    if not first:
        return 0
    loop = new_event_loop()
    try:
        loop.run_until_complete(_serve(json.loads(first), inp, out))
    except Exception as exc:
        with contextlib.suppress(OSError):
            out.write(_line({"kind": "fatal", "what": "start", "error": repr(exc)}))
        raise
    finally:
        loop.close()
    return 0


def main() -> int:
    """``python -m graph.procpool``: a graph process started by a run, never by hand."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # a stray print must not corrupt the wire: stdout now goes to stderr
    return _child_main(sys.stdin.buffer, out)


if __name__ == "__main__":
    sys.exit(main())
