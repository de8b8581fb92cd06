"""Scoring with a saved metric model: through vLLM's pooling ``/score`` API, or in-process.

``open_scorer(target)``: a URL (``http://host:port`` or ``…/v1``) means a vLLM server serving
the saved folder (``python -m vllm.entrypoints.openai.api_server --model FOLDER --dtype
float32 --enforce-eager``: vLLM picks its pooling runner for a one-label classifier and
answers ``/score`` with the sigmoid of the logit); a folder means in-process transformers.
Either way ``scorer.backend`` says which, and the scores are the same numbers (the sigmoid
output in [0, 1]).

``MetricJudge`` scores a record of a criteria set on each criterion, in the layout the model
was trained with (``metric.text``), and returns the judge's ``PointwiseResult``; the
metric-judge node uses it when ``judge_backend`` is ``encoder``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import httpx

from dataset.embeddings import base_folder
from metric.data import GENERIC, context_fields, instruction
from metric.text import pair_texts, to_scale
from state.criteria import CriteriaSet
from state.judgements import CriterionScore, PointwiseResult

DEFAULT_MAX_LEN = 256


class ScorerError(RuntimeError):
    pass


class Scorer(Protocol):
    backend: str

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """The model's score in [0, 1] for each (text_1, text_2)."""
        ...


class InProcessScorer:
    """transformers on this machine, float32."""

    def __init__(self, folder: Path, *, batch_size: int = 16) -> None:
        from metric.train import load_classifier

        self.folder = folder
        self.model = load_classifier(folder)
        self.tokenizer = _tokenizer(str(folder))
        self.batch_size = batch_size
        self.backend = f"in-process transformers ({folder})"

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        import torch

        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(pairs), self.batch_size):
                chunk = pairs[i : i + self.batch_size]
                enc = self.tokenizer(
                    [a for a, _ in chunk],
                    [b for _, b in chunk],
                    truncation="longest_first",
                    max_length=512,
                    padding=True,
                    return_tensors="pt",
                )
                logits = self.model(**enc).logits.squeeze(-1)
                out.extend(torch.sigmoid(logits).tolist())
        return out


class VLLMScorer:
    """A vLLM server serving the saved folder; ``POST /score`` with paired lists."""

    def __init__(self, url: str, model: str | None = None, *, timeout: float = 60.0) -> None:
        root = url.rstrip("/").removesuffix("/v1")
        self.root = root
        self.client = httpx.Client(timeout=timeout)
        self.model = model or self._served_model()
        self.backend = f"vLLM /score at {root} (model {self.model})"

    def _served_model(self) -> str:
        try:
            data = self.client.get(f"{self.root}/v1/models").json()
            return str(data["data"][0]["id"])
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise ScorerError(f"no vLLM server answering at {self.root}: {exc}") from None

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        body = {
            "model": self.model,
            "text_1": [a for a, _ in pairs],
            "text_2": [b for _, b in pairs],
        }
        try:
            r = self.client.post(f"{self.root}/score", json=body)
            r.raise_for_status()
            data = r.json()["data"]
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise ScorerError(f"vLLM /score at {self.root} failed: {exc}") from None
        scores = [0.0] * len(pairs)
        for row in data:
            scores[int(row["index"])] = float(row["score"])
        return scores


@cache
def _tokenizer(folder: str) -> Any:
    from metric.train import load_tokenizer

    return load_tokenizer(Path(folder))


def _meta(folder: Path) -> dict[str, Any]:
    from metric.train import META_FILE

    path = folder / META_FILE
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def open_scorer(target: str, *, tokenizer_folder: Path | None = None) -> tuple[Scorer, Any, int]:
    """The scorer for ``target`` (URL: vLLM; folder: in-process), its tokenizer, max length."""
    if target.startswith(("http://", "https://")):
        folder = tokenizer_folder or base_folder()
        meta = _meta(folder)
        return (
            VLLMScorer(target),
            _tokenizer(str(folder)),
            int(meta.get("max_len", DEFAULT_MAX_LEN)),
        )
    folder = Path(target)
    if not (folder / "config.json").is_file():
        raise ScorerError(f"{folder}: not a saved model folder (no config.json)")
    meta = _meta(folder)
    return (
        InProcessScorer(folder),
        _tokenizer(str(folder)),
        int(meta.get("max_len", DEFAULT_MAX_LEN)),
    )


@dataclass
class MetricJudge:
    """Scores records of any criteria set on each of its criteria with the trained model."""

    scorer: Scorer
    tokenizer: Any
    max_len: int = DEFAULT_MAX_LEN
    keep_end: tuple[str, ...] = ("history",)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, target: str) -> MetricJudge:
        scorer, tokenizer, max_len = open_scorer(target)
        return cls(scorer, tokenizer, max_len)

    @property
    def backend(self) -> str:
        return self.scorer.backend

    def inputs(self, cset: CriteriaSet, record: Mapping[str, str]) -> list[tuple[str, str]]:
        """One (text_1, text_2) per criterion: the task and criterion told in plain words."""
        out = []
        for c in cset.criteria:
            fields = context_fields(cset, c, dict(record), self.keep_end)
            out.append(
                pair_texts(
                    self.tokenizer,
                    instruction(GENERIC, cset, c),
                    fields,
                    record[cset.target],
                    self.max_len,
                )
            )
        return out

    def score_records(
        self, cset: CriteriaSet, records: Sequence[Mapping[str, str]]
    ) -> list[PointwiseResult]:
        # One call at a time: a fast tokenizer refuses concurrent use from several threads,
        # and the model is CPU-bound anyway.
        with self._lock:
            pairs = [p for r in records for p in self.inputs(cset, r)]
            probs = self.scorer.score(pairs)
        k = len(cset.criteria)
        results = []
        for i in range(len(records)):
            scores = {}
            for c, p in zip(cset.criteria, probs[i * k : (i + 1) * k], strict=True):
                value = to_scale(p, c.scale)
                scores[c.name] = CriterionScore(score=value, sampled=round(value), method="encoder")
            results.append(
                PointwiseResult(
                    criteria=cset.name,
                    scores=scores,
                    rationale=f"metric encoder, {self.backend}",
                    method="encoder",
                )
            )
        return results

    def score_record(self, cset: CriteriaSet, record: Mapping[str, str]) -> PointwiseResult:
        return self.score_records(cset, [record])[0]


_JUDGES: dict[str, MetricJudge] = {}
_OPENING = threading.Lock()


def metric_judge_for(target: str) -> MetricJudge:
    """One judge per target per process (the model loads once, from any thread)."""
    with _OPENING:
        if target not in _JUDGES:
            _JUDGES[target] = MetricJudge.open(target)
        return _JUDGES[target]


# --- a vLLM server for a saved folder ------------------------------------------------------------


@contextmanager
def encoder_server(
    folder: Path, port: int, *, log_file: Path | None = None, timeout: float = 300.0
) -> Iterator[str]:
    """Start vLLM's OpenAI-compatible server on ``folder`` (pooling runner, float32, eager);
    yields its base URL; stops it on exit."""
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(folder),
        "--served-model-name",
        "refed-metric",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "512",
        "--disable-uvicorn-access-log",
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    out = log_file.open("w") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ScorerError(f"vLLM encoder server exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ScorerError(f"vLLM encoder server not ready after {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if log_file and out is not subprocess.DEVNULL:
            out.close()  # type: ignore[union-attr]
