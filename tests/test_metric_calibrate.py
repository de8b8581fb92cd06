"""metric.calibrate: the fitted map spreads bunched scores onto the ratings, keeps every
ranking, and folds into the last layer (so a saved folder serves the calibrated numbers)."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from metric.calibrate import calibrate, fit_affine, fold
from metric.text import sigmoid


class _Head(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.classifier = nn.Linear(8, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(torch.tanh(self.body(x))).squeeze(-1)
        return out


def test_bunched_scores_spread_onto_the_ratings() -> None:
    """Good answers (target 0.75) and bad ones (0.0) whose logits all sit near 0.6 on the
    sigmoid: after the map the two groups average near their targets, in the same order."""
    rng = random.Random(0)
    good = [0.45 + rng.gauss(0, 0.02) for _ in range(200)]
    bad = [0.35 + rng.gauss(0, 0.02) for _ in range(200)]
    logits, targets = good + bad, [0.75] * 200 + [0.0] * 200
    assert abs(sum(map(sigmoid, good)) / 200 - sum(map(sigmoid, bad)) / 200) < 0.05
    m = fit_affine(logits, targets)
    assert m.a > 1.0
    g = sum(sigmoid(m(z)) for z in good) / 200
    b = sum(sigmoid(m(z)) for z in bad) / 200
    assert g > 0.55 and b < 0.25 and g - b > 0.4, (g, b)
    order = sorted(range(400), key=lambda i: logits[i])
    assert sorted(range(400), key=lambda i: m(logits[i])) == order


def test_fold_makes_the_head_output_the_map() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 4)
    for bias in (True, False):
        head = _Head(bias)
        with torch.no_grad():
            before = head(x)
        targets = [0.75 if i % 2 else 0.0 for i in range(16)]
        m = calibrate(head, before.tolist(), targets)
        assert bias or m.c == 0.0
        with torch.no_grad():
            after = head(x)
        assert torch.allclose(after, m.a * before + m.c, atol=1e-5)
    with pytest.raises(ValueError):
        fold(_Head(bias=False), type(m)(2.0, 1.0))
    with pytest.raises(ValueError):
        fit_affine([], [])
