"""Putting a trained head's scores on the pipeline's scale.

A head trained on many sets places a text's score where the pairwise loss left it, which on
the pipeline's own criteria can bunch in a narrow band. ``calibrate`` fits an increasing
affine map of the logit, ``a * z + c`` (``a > 0``), by binary cross-entropy against the
ratings of rated examples (the negatives: a preferred answer at 4 of 5, a made-up bad one at
1), and folds it into the head's last layer, so a saved folder stays a standard one-output
classifier that vLLM serves with the same numbers. An increasing map changes no ranking:
every Spearman, pairwise accuracy and AUC stays as it was. A last layer without a bias (the
decoder's) gets the scale alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

A_RANGE = (0.05, 50.0)


@dataclass(frozen=True)
class Affine:
    a: float
    c: float

    def __call__(self, z: float) -> float:
        return self.a * z + self.c


def fit_affine(
    logits: Sequence[float], targets: Sequence[float], *, shift: bool = True, iters: int = 100
) -> Affine:
    """The ``a > 0`` (and ``c``) minimising the cross-entropy between ``sigmoid(a z + c)`` and
    the targets in [0, 1]."""
    if len(logits) != len(targets) or not logits:
        raise ValueError("calibration needs as many targets as logits, and at least one")
    z = torch.tensor(list(logits), dtype=torch.float64)
    y = torch.tensor(list(targets), dtype=torch.float64)
    log_a = torch.zeros((), dtype=torch.float64, requires_grad=True)  # a = exp(log_a) > 0
    c = torch.zeros((), dtype=torch.float64, requires_grad=shift)
    params = [log_a, c] if shift else [log_a]
    opt = torch.optim.LBFGS(params, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(log_a.exp() * z + c, y)
        loss.backward()
        return loss

    opt.step(closure)
    a = min(max(float(log_a.detach().exp()), A_RANGE[0]), A_RANGE[1])
    return Affine(a, float(c.detach()) if shift else 0.0)


def last_layer(head: nn.Module) -> nn.Linear:
    for name in ("classifier", "score"):
        layer = getattr(head, name, None)
        if isinstance(layer, nn.Linear) and layer.out_features == 1:
            return layer
    raise TypeError(f"{type(head).__name__} has no one-output last layer to calibrate")


@torch.no_grad()
def fold(head: nn.Module, affine: Affine) -> None:
    """Make ``head``'s logit ``a * z + c`` (``c`` needs a bias)."""
    layer = last_layer(head)
    layer.weight.mul_(affine.a)
    if layer.bias is not None:
        layer.bias.mul_(affine.a).add_(affine.c)
    elif affine.c != 0.0:
        raise ValueError("the head's last layer has no bias: calibrate with shift=False")


def calibrate(head: nn.Module, logits: Sequence[float], targets: Sequence[float]) -> Affine:
    """Fit the map on ``logits`` (the head's, on rated examples) and fold it into ``head``."""
    affine = fit_affine(logits, targets, shift=last_layer(head).bias is not None)
    fold(head, affine)
    return affine
