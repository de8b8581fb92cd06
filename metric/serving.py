"""Scoring with a saved metric model: in-process, or through a vLLM server serving it.

A saved folder says in ``refed_metric.json`` which base it is (``encoder``: the MiniLM
cross-encoder; ``decoder``: SmolLM2 with a scalar head; a folder without the file is an
encoder). ``open_scorer(target)``:

- a folder: in-process transformers, float32;
- a URL (``http://host:port`` or ``…/v1``): a vLLM server serving the folder
  (``python -m metric serve``: ``--dtype float32 --enforce-eager``, pooling runner). An
  encoder is asked through ``/score`` (sentence pairs), a decoder through ``/classify``
  (whole prompts); both answer with the sigmoid of the logit. The layout and tokenizer come
  from the folder the server serves (its ``root`` in ``/v1/models``, when it is on this
  machine) or from ``folder=``.

Either way ``scorer.backend`` says which, and the scores are the same numbers.

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

from metric.data import GENERIC, context_fields, instruction
from metric.text import ChatFrame, Field, pair_texts, prompt_segments, to_scale
from state.criteria import CriteriaSet
from state.judgements import CriterionScore, PointwiseResult

Input = str | tuple[str, str]
"""A decoder's prompt, or an encoder's (text_1, text_2)."""


class ScorerError(RuntimeError):
    pass


class Scorer(Protocol):
    backend: str

    def score(self, inputs: Sequence[Input]) -> list[float]:
        """The model's score in [0, 1] for each input."""
        ...


def read_meta(folder: Path) -> dict[str, Any]:
    from metric.train import META_FILE

    path = folder / META_FILE
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def kind_of(folder: Path) -> str:
    return str(read_meta(folder).get("kind", "encoder"))


@cache
def _tokenizer(folder: str) -> Any:
    from metric.encoder import load_tokenizer

    return load_tokenizer(Path(folder))


class InProcessScorer:
    """transformers on this machine, float32."""

    def __init__(self, folder: Path, *, batch_size: int = 8) -> None:
        import torch

        from metric.encoder import quiet_transformers

        quiet_transformers()
        from transformers import AutoModelForSequenceClassification

        self.folder = folder
        self.kind = kind_of(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), dtype=torch.float32
        )
        self.model.eval()
        self.tokenizer = _tokenizer(str(folder))
        # a decoder reads each row's last token that is not padding: pad on the right, so
        # positions are those of the prompt alone
        self.tokenizer.padding_side = "right"
        self.batch_size = batch_size
        self.backend = f"in-process transformers ({folder})"

    def score(self, inputs: Sequence[Input]) -> list[float]:
        import torch

        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(inputs), self.batch_size):
                chunk = inputs[i : i + self.batch_size]
                if self.kind == "decoder":
                    # right padding: the head reads each row's last token that is not padding
                    enc = self.tokenizer(
                        [str(x) for x in chunk],
                        add_special_tokens=False,
                        padding=True,
                        return_tensors="pt",
                    )
                else:
                    enc = self.tokenizer(
                        [x[0] for x in chunk],
                        [x[1] for x in chunk],
                        truncation="longest_first",
                        max_length=512,
                        padding=True,
                        return_tensors="pt",
                    )
                logits = self.model(**enc).logits.squeeze(-1)
                out.extend(torch.sigmoid(logits).reshape(-1).tolist())
        return out


class VLLMScorer:
    """A vLLM server serving a saved folder: ``/score`` (encoder) or ``/classify`` (decoder)."""

    def __init__(
        self, url: str, *, kind: str = "encoder", model: str | None = None, timeout: float = 120.0
    ) -> None:
        self.root = url.rstrip("/").removesuffix("/v1")
        self.client = httpx.Client(timeout=timeout)
        self.kind = kind
        self.model = model or str(served_model(self.root)["id"])
        route = "/classify" if kind == "decoder" else "/score"
        self.backend = f"vLLM {route} at {self.root} (model {self.model})"

    def _post(self, route: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            r = self.client.post(f"{self.root}{route}", json=body)
            r.raise_for_status()
            return list(r.json()["data"])
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise ScorerError(f"vLLM {route} at {self.root} failed: {exc}") from None

    def score(self, inputs: Sequence[Input]) -> list[float]:
        if not inputs:
            return []
        scores = [0.0] * len(inputs)
        if self.kind == "decoder":
            rows = self._post("/classify", {"model": self.model, "input": [str(x) for x in inputs]})
            for row in rows:
                scores[int(row["index"])] = float(row["probs"][0])
        else:
            body = {
                "model": self.model,
                "text_1": [x[0] for x in inputs],
                "text_2": [x[1] for x in inputs],
            }
            for row in self._post("/score", body):
                scores[int(row["index"])] = float(row["score"])
        return scores


def served_model(url: str) -> dict[str, Any]:
    """The first model a server lists (its ``id`` and ``root``)."""
    root = url.rstrip("/").removesuffix("/v1")
    try:
        data = httpx.get(f"{root}/v1/models", timeout=30.0).json()
        return dict(data["data"][0])
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        raise ScorerError(f"no vLLM server answering at {root}: {exc}") from None


def open_scorer(target: str, *, folder: Path | None = None) -> tuple[Scorer, Path]:
    """The scorer for ``target`` (URL: vLLM; folder: in-process) and the folder whose layout
    and tokenizer it reads with."""
    if target.startswith(("http://", "https://")):
        served = served_model(target)
        if folder is None:
            root = Path(str(served.get("root", "")))
            if (root / "config.json").is_file():
                folder = root
            else:
                from dataset.embeddings import base_folder

                folder = base_folder()  # a MiniLM cross-encoder served elsewhere
        return VLLMScorer(target, kind=kind_of(folder), model=str(served["id"])), folder
    path = Path(target)
    if not (path / "config.json").is_file():
        raise ScorerError(f"{path}: not a saved model folder (no config.json)")
    return InProcessScorer(path), path


@dataclass
class MetricJudge:
    """Scores records of any criteria set on each of its criteria with the trained model."""

    scorer: Scorer
    folder: Path
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        meta = read_meta(self.folder)
        self.kind = str(meta.get("kind", "encoder"))
        self.max_len = int(meta.get("max_len", 256))
        self.keep_end: tuple[str, ...] = ("history",)
        self.tokenizer = _tokenizer(str(self.folder))
        self.frame = ChatFrame.of(self.tokenizer) if self.kind == "decoder" else None

    @classmethod
    def open(cls, target: str, *, folder: Path | None = None) -> MetricJudge:
        scorer, where = open_scorer(target, folder=folder)
        return cls(scorer, where)

    @property
    def backend(self) -> str:
        return self.scorer.backend

    def layout(
        self, instruction_text: str, context: Sequence[Field], target_label: str, target: str
    ) -> Input:
        """The model's input for one judged text."""
        if self.frame is not None:
            return "".join(
                prompt_segments(
                    self.tokenizer,
                    self.frame,
                    instruction_text,
                    context,
                    target_label,
                    target,
                    self.max_len,
                )
            )
        return pair_texts(self.tokenizer, instruction_text, context, target, self.max_len)

    def inputs(self, cset: CriteriaSet, record: Mapping[str, str]) -> list[Input]:
        """One input per criterion: the task and criterion told in plain words."""
        return [
            self.layout(
                instruction(GENERIC, cset, c),
                context_fields(cset, c, dict(record), self.keep_end),
                cset.fields[cset.target],
                record[cset.target],
            )
            for c in cset.criteria
        ]

    def score_records(
        self, cset: CriteriaSet, records: Sequence[Mapping[str, str]]
    ) -> list[PointwiseResult]:
        # One call at a time: a fast tokenizer refuses concurrent use from several threads,
        # and the model is CPU-bound anyway.
        with self._lock:
            inputs = [x for r in records for x in self.inputs(cset, r)]
            probs = self.scorer.score(inputs)
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
def model_server(
    folder: Path,
    port: int,
    *,
    log_file: Path | None = None,
    timeout: float = 300.0,
    max_model_len: int | None = None,
) -> Iterator[str]:
    """Start vLLM's OpenAI-compatible server on ``folder`` (pooling runner, float32, eager);
    yields its base URL; stops it on exit."""
    if max_model_len is None:
        max_model_len = 512 if kind_of(folder) == "encoder" else 4096
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
        str(max_model_len),
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
                raise ScorerError(f"vLLM server for {folder} exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ScorerError(f"vLLM server for {folder} not ready after {timeout:.0f} s")
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


encoder_server = model_server
"""The former name (it serves either base)."""
