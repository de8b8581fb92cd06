"""Helpers for the metric/ tests: skips when the base weights or the shared data are absent,
and a small trained model made once per session (data-to-text, a few hundred pairs, one
epoch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from judge.sets import JUDGE_DATA
from metric.data import Example


def need_base() -> Path:
    from dataset.embeddings import BaseModelMissing, base_folder

    try:
        return base_folder()
    except BaseModelMissing as exc:
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
    trunk_logits: dict[str, float]
    seconds: float


def tiny_run(out: Path) -> Tiny:
    """Data-to-text (SF restaurant + hotel): ~600 training texts, ~200 pairs, one epoch."""
    import time

    import torch

    from metric.data import TASKS, Caps
    from metric.experiment import prepare
    from metric.train import (
        Head,
        TrainConfig,
        Trunk,
        encode,
        load_classifier,
        load_tokenizer,
        predict,
        save,
        train_head,
    )

    start = time.monotonic()
    torch.manual_seed(0)
    base = need_base()
    cfg = TrainConfig(epochs=1, batch_size=16, max_len=128, train_layers=2, seed=0)
    p = prepare(TASKS["data2text"], Caps(100, 60, None), cfg)
    tokenizer = load_tokenizer(base)
    model = load_classifier(base)
    frozen = model.config.num_hidden_layers - cfg.train_layers
    trunk = Trunk(model, frozen)
    trunk.add(encode(tokenizer, [*p.train, *p.test], cfg.max_len))
    ids = [e.uid for e in p.test]
    untrained = predict(Head(model, frozen, cfg.seed), trunk, ids)
    head = Head(model, frozen, cfg.seed)
    train_head(head, trunk, p.train, p.train_pairs, cfg)
    trained = predict(head, trunk, ids)
    folder = save(
        head,
        out / "model",
        cfg=cfg,
        meta={"max_len": cfg.max_len, "tasks": {"data2text": {}}},
        card="# tiny test model\n",
    )
    return Tiny(folder, trained, untrained, p.test, trained, time.monotonic() - start)
