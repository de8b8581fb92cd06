"""The input layout of the cross-encoder, shared by training, evaluation and serving.

A judged record becomes one sentence pair: the first text is the instruction (task and
criterion in plain words) followed by the context fields the criterion looks at, each on
its own line as ``Label: text``; the second text is the text being judged. The tokenizer
joins them as ``[CLS] first [SEP] second [SEP]``, which is also what vLLM's ``/score`` does
with ``text_1`` and ``text_2``.

Both texts are cut so the pair fits ``max_len`` tokens: the instruction is never cut; when
everything does not fit, the judged text keeps at least half of the room left, and the
context fields share the rest (short fields whole, long ones cut). Documents keep their
beginning; fields marked ``keep_end`` (a conversation so far) keep their end, where the
latest turns are. Cuts fall on token boundaries of the original string, so the same texts
give the same tokens in-process and on a server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Tokenizer(Protocol):
    def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Field:
    """A context field shown before the judged text."""

    label: str
    text: str
    keep_end: bool = False


def _offsets(tokenizer: Tokenizer, text: str) -> list[tuple[int, int]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [(int(a), int(b)) for a, b in enc["offset_mapping"]]


def cut(text: str, offsets: Sequence[tuple[int, int]], keep: int, *, keep_end: bool) -> str:
    """``text`` cut to its first (or last) ``keep`` tokens, at token boundaries."""
    if keep >= len(offsets):
        return text
    if keep <= 0:
        return ""
    if keep_end:
        return "… " + text[offsets[len(offsets) - keep][0] :].lstrip()
    return text[: offsets[keep - 1][1]].rstrip() + " …"


def share(budget: int, lengths: Sequence[int]) -> list[int]:
    """Split ``budget`` tokens over fields: short ones whole, the rest evenly (water filling)."""
    keep = [0] * len(lengths)
    left = budget
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for rank, i in enumerate(order):
        fair = left // (len(order) - rank)
        keep[i] = min(lengths[i], max(0, fair))
        left -= keep[i]
    return keep


def pair_texts(
    tokenizer: Tokenizer,
    instruction: str,
    context: Sequence[Field],
    target: str,
    max_len: int,
) -> tuple[str, str]:
    """The two texts of the cross-encoder's input, cut to fit ``max_len`` tokens."""
    context = [Field(f.label, f.text.strip(), f.keep_end) for f in context]
    target = target.strip()
    labels = [f"{f.label}:" for f in context]
    fixed = len(_offsets(tokenizer, instruction)) + sum(len(_offsets(tokenizer, x)) for x in labels)
    avail = max(0, max_len - 3 - fixed - 2 * len(context))  # 3 special tokens, cut marks
    target_offsets = _offsets(tokenizer, target)
    field_offsets = [_offsets(tokenizer, f.text) for f in context]
    lengths = [len(o) for o in field_offsets]
    n_target = len(target_offsets)
    if sum(lengths) + n_target <= avail:
        keep_target, keep_fields = n_target, lengths
    else:
        keep_target = min(n_target, max(avail - sum(lengths), math.ceil(avail / 2)))
        keep_fields = share(avail - keep_target, lengths)
    first = [instruction.strip()]
    for f, offsets, keep in zip(context, field_offsets, keep_fields, strict=True):
        body = cut(f.text, offsets, keep, keep_end=f.keep_end)
        if offsets and keep == 0:
            body = "…"
        first.append(f"{f.label}: {body}")
    second = cut(target, target_offsets, keep_target, keep_end=False)
    return "\n".join(first), second


def to_scale(probability: float, scale: tuple[int, int]) -> float:
    """A score in [0, 1] (the model's sigmoid output) placed on a criterion's scale."""
    lo, hi = scale
    return lo + (hi - lo) * probability


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
