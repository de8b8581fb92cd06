"""The bases a metric can be trained from, by name.

- ``minilm``: all-MiniLM-L6-v2 as a cross-encoder (``metric.encoder``), 22M parameters,
  inputs up to 512 tokens;
- ``smollm2``: SmolLM2-135M-Instruct with a scalar head (``metric.decoder``), 135M
  parameters, an instruction-tuned decoder, inputs up to 2048 tokens here.

``DEFAULT_BASE`` is the one ``python -m metric run`` trains unless told otherwise, chosen by
the results in BENCHMARKS.md: on all the data over three seeds SmolLM2's mean over the five
sets is above MiniLM's in every setting (single 0.290 against 0.232, multi-task 0.283
against 0.182, leave-one-out 0.114 against 0.081), and so is its junk AUC multi-task (0.659
against 0.593).
"""

from __future__ import annotations

from metric.decoder import DecoderBase
from metric.encoder import EncoderBase

Base = EncoderBase | DecoderBase

BASES: dict[str, type[EncoderBase] | type[DecoderBase]] = {
    "minilm": EncoderBase,
    "smollm2": DecoderBase,
}
DEFAULT_BASE = "smollm2"


def open_base(name: str, *, max_len: int | None = None, train_layers: int = 1) -> Base:
    """The named base, loaded (float32)."""
    if name not in BASES:
        raise ValueError(f"unknown base {name!r}; known: {', '.join(BASES)}")
    cls = BASES[name]
    if max_len is None:
        return cls(train_layers=train_layers)
    return cls(max_len=max_len, train_layers=train_layers)
