"""Helpers for the metric/ tests: skips when the base weights or the shared data are absent,
and a small trained model made once per session (data-to-text, a few hundred pairs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from judge.sets import JUDGE_DATA
from metric.data import Example
from metric.train import TrainStats


def need_base() -> Path:
    from dataset.embeddings import BaseModelMissing, base_folder

    try:
        return base_folder()
    except BaseModelMissing as exc:
        pytest.skip(str(exc))


def need_decoder() -> Path:
    from metric.decoder import BaseMissing, decoder_folder

    try:
        return decoder_folder()
    except BaseMissing as exc:
        pytest.skip(str(exc))


def need_judge_data() -> Path:
    if not JUDGE_DATA.is_dir():
        pytest.skip(f"human-judgement data not found at {JUDGE_DATA} (expected ../shared/data)")
    return JUDGE_DATA


@dataclass
class Tiny:
    """A tiny run: its trained and untrained scores on a held-out slice, and the saved folder."""

    folder: Path
    trained: dict[str, float]
    untrained: dict[str, float]
    test: list[Example]
    stats: TrainStats
    loss_before: float
    """The loss over the training data before training, and after."""
    loss_after: float


def tiny_run(out: Path) -> Tiny:
    """Data-to-text (SF restaurant + hotel) on the MiniLM base: ~300 training texts, a few
    hundred pairs, three epochs; nothing cached on disk."""
    import torch

    from metric.data import TASKS, Caps
    from metric.encoder import EncoderBase
    from metric.experiment import prepare
    from metric.train import Objective, TrainConfig, predict, save, train_head
    from metric.trunk import trunk

    torch.manual_seed(0)
    need_base()
    cfg = TrainConfig(epochs=3, batch_size=16, seed=0)
    p = prepare(TASKS["data2text"], Caps(100, 60, None), min_gap=cfg.min_gap)
    base = EncoderBase(max_len=128)
    inputs = base.inputs([*p.train, *p.test])
    feats = trunk(base, {"data2text": inputs}, [base.frozen], cache_dir=None, log=lambda _: None)
    ids = [e.uid for e in p.test]
    untrained = predict(base.head(0), feats[base.frozen], inputs, ids)
    head = base.head(0)
    objective = Objective(p.train, p.train_pairs, inputs, cfg)
    before = objective.mean_loss(head, feats[base.frozen])
    stats = train_head(head, feats[base.frozen], inputs, p.train, p.train_pairs, cfg)
    after = objective.mean_loss(head, feats[base.frozen])
    trained = predict(head, feats[base.frozen], inputs, ids)
    meta = {"kind": "encoder", "base": "minilm", "max_len": 128, "tasks": {"data2text": {}}}
    folder = save(base, head, out / "model", cfg=cfg, meta=meta, card="# tiny test model\n")
    return Tiny(folder, trained, untrained, p.test, stats, before, after)
