"""Training a base's head on stored frozen-layer features, on a CPU.

The head is the trained top of a base (``metric.encoder``, ``metric.decoder``): it reads the
stored output of the frozen layers (``metric.trunk``), so every setting and seed of a run
shares that work. Its sigmoid output is the score in [0, 1], placed on a criterion's scale by
the caller (vLLM applies the same sigmoid to a one-label classifier).

Loss, per batch: a pairwise logistic (RankNet) loss ``log(1 + exp(-(s_good - s_bad)))`` over
the good-vs-bad pairs in the batch, plus ``regression_weight`` x binary cross-entropy between
the sigmoid output and the rating mapped to [0, 1] (rated examples only), which puts the
output on the rating scale. Texts compared with each other (one source under one criterion)
always share a batch.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from metric.data import Example, Pair
from metric.features import Features, Inputs

LAYOUT_VERSION = 2
"""Changes when an input layout (metric.text) changes; saved with every model."""
META_FILE = "refed_metric.json"


class Head(Protocol):
    def __call__(self, chains: Sequence[Sequence[str]], feats: Features) -> torch.Tensor: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def parameters(self) -> Any: ...

    def named_parameters(self) -> Any: ...


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    batch_size: int = 16
    lr: float = 1e-4
    """Learning rate of the trained transformer layers."""
    head_lr: float = 2e-3
    """Learning rate of the new one-output layer."""
    weight_decay: float = 0.01
    warmup: float = 0.1
    regression_weight: float = 0.5
    min_gap: float = 0.15
    """Smallest rating gap (fraction of the scale) for a good-vs-bad pair."""
    train_layers: int = 1
    """Top transformer layers trained (the others are frozen and stored)."""
    seed: int = 0


@dataclass
class TrainStats:
    examples: int
    pairs: int
    rated: int
    steps: int
    seconds: float
    epoch_loss: list[float] = field(default_factory=list)
    """Mean loss of each epoch."""


def length_batches(lengths: dict[str, int], batch_size: int) -> list[list[str]]:
    """Ids in batches of similar length (less padding)."""
    order = sorted(lengths, key=lambda k: lengths[k])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _units(examples: Sequence[Example]) -> list[list[str]]:
    """Texts that must share a batch: one source under one criterion."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for ex in examples:
        groups[(ex.group, ex.criterion)].append(ex.uid)
    return list(groups.values())


def batches(
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


def _optimizer(head: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    new = [p for n, p in head.named_parameters() if n.startswith(("classifier.", "score."))]
    ids = {id(p) for p in new}
    rest = [p for p in head.parameters() if id(p) not in ids]
    return torch.optim.AdamW(
        [{"params": rest, "lr": cfg.lr}, {"params": new, "lr": cfg.head_lr}],
        weight_decay=cfg.weight_decay,
    )


class Objective:
    """The loss over batches of ``examples`` with the good-vs-bad ``pairs`` among them."""

    def __init__(
        self, examples: Sequence[Example], pairs: Sequence[Pair], inputs: Inputs, cfg: TrainConfig
    ) -> None:
        self.cfg = cfg
        self.inputs = inputs
        self.by_uid = {e.uid: e for e in examples}
        usable = [
            p
            for p in pairs
            if p.label != "tie" and p.first in self.by_uid and p.second in self.by_uid
        ]
        self.oriented = [
            (p.first, p.second) if p.label == "first" else (p.second, p.first) for p in usable
        ]
        self.pairs_of: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for good, bad in self.oriented:
            self.pairs_of[good].append((good, bad))
        self.lengths = {k: inputs.tokens(k) for k in self.by_uid}
        self.units = _units(examples)

    def batches(self, rng: random.Random) -> list[list[str]]:
        return batches(self.units, self.lengths, self.cfg.batch_size, rng)

    def loss(self, head: nn.Module, feats: Features, batch: list[str]) -> torch.Tensor:
        index = {k: i for i, k in enumerate(batch)}
        logits = head([self.inputs.chains[k] for k in batch], feats)
        in_batch = [
            (index[g], index[b]) for k in batch for g, b in self.pairs_of.get(k, ()) if b in index
        ]
        loss = logits.new_zeros(())
        if in_batch:
            g = torch.tensor([g for g, _ in in_batch])
            b = torch.tensor([b for _, b in in_batch])
            loss = loss + nn.functional.softplus(-(logits[g] - logits[b])).mean()
        rated = [(index[k], self.by_uid[k].norm) for k in batch if self.by_uid[k].norm is not None]
        if rated and self.cfg.regression_weight > 0:
            r = torch.tensor([i for i, _ in rated])
            y = torch.tensor([float(v) for _, v in rated if v is not None])
            bce = nn.functional.binary_cross_entropy_with_logits(logits[r], y)
            loss = loss + self.cfg.regression_weight * bce
        return loss

    @torch.no_grad()
    def mean_loss(self, head: nn.Module, feats: Features) -> float:
        """The loss over all the training data, without dropout (batches of a fixed order)."""
        head.eval()
        values = [float(self.loss(head, feats, b)) for b in self.batches(random.Random(0))]
        return sum(values) / len(values) if values else math.nan


def train_head(
    head: nn.Module,
    feats: Features,
    inputs: Inputs,
    examples: Sequence[Example],
    pairs: Sequence[Pair],
    cfg: TrainConfig,
    *,
    desc: str = "training",
    log: Callable[[str], None] | None = None,
) -> TrainStats:
    """Fine-tune ``head`` on ``examples`` with the pairs among them."""
    start = time.monotonic()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    objective = Objective(examples, pairs, inputs, cfg)
    steps_per_epoch = len(objective.batches(random.Random(0)))
    total = max(1, steps_per_epoch * cfg.epochs)
    warmup = max(1, int(total * cfg.warmup))
    opt = _optimizer(head, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    head.train()
    step = 0
    epoch_loss: list[float] = []
    for _ in range(cfg.epochs):
        losses = []
        for batch in objective.batches(rng):
            loss = objective.loss(head, feats, batch)
            if loss.requires_grad:
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(head.parameters(), 1.0)
                opt.step()
                losses.append(float(loss.detach()))
            sched.step()
            step += 1
        epoch_loss.append(sum(losses) / len(losses) if losses else math.nan)
    head.eval()
    stats = TrainStats(
        examples=len(examples),
        pairs=len(objective.oriented),
        rated=sum(e.norm is not None for e in examples),
        steps=step,
        seconds=time.monotonic() - start,
        epoch_loss=epoch_loss,
    )
    if log is not None:
        losses_text = ", ".join(f"{v:.3f}" for v in epoch_loss)
        log(
            f"{desc}: {stats.examples} texts, {stats.pairs} pairs, {stats.steps} steps, "
            f"{stats.seconds:.0f} s, loss per epoch {losses_text}"
        )
    return stats


@torch.no_grad()
def predict(
    head: nn.Module,
    feats: Features,
    inputs: Inputs,
    uids: Iterable[str],
    *,
    batch_size: int = 32,
) -> dict[str, float]:
    """The head's logit for every example id."""
    head.eval()
    lengths = {k: inputs.tokens(k) for k in uids}
    out: dict[str, float] = {}
    for chunk in length_batches(lengths, batch_size):
        logits = head([inputs.chains[k] for k in chunk], feats)
        out.update(zip(chunk, logits.float().tolist(), strict=True))
    return out


class Saves(Protocol):
    def save(self, head: nn.Module, folder: Path) -> Path: ...


def save(
    base: Saves,
    head: nn.Module,
    folder: Path,
    *,
    cfg: TrainConfig,
    meta: dict[str, Any],
    card: str,
) -> Path:
    """A standard Hugging Face sequence-classification folder, with a model card and
    ``refed_metric.json`` (the base, the input layout and the tasks it was trained on)."""
    base.save(head, folder)
    info = {"layout_version": LAYOUT_VERSION, "train": asdict(cfg), **meta}
    (folder / META_FILE).write_text(json.dumps(info, indent=2) + "\n")
    (folder / "README.md").write_text(card)
    return folder
