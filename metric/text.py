"""The input layouts of the two bases, shared by training, evaluation and serving.

Both read the same parts: an instruction (the task and the criterion in plain words), the
context fields the criterion looks at (``Label: text``, one per line) and the judged text.

- **Encoder** (the MiniLM cross-encoder): a sentence pair, ``text_1`` = the instruction then
  the context lines, ``text_2`` = the judged text; the tokenizer joins them as
  ``[CLS] text_1 [SEP] text_2 [SEP]``, which is also what vLLM's ``/score`` does.
- **Decoder** (SmolLM2-Instruct with a scalar head): one chat turn built from the model's own
  chat template, in three segments that are read in order: the context lines, then
  ``Label: judged text``, then the instruction, then the assistant's turn opens; the score is
  read at that last token. Texts that share a beginning share its segments, so the frozen
  lower layers read an article once for all its summaries and criteria. Each segment ends
  with a newline and the next starts with a word, so tokenizing the segments one by one
  gives the same tokens as tokenizing the whole prompt (what vLLM's ``/classify`` does).

Cutting to a token budget (``fit``) is context-aware: the instruction is never cut; the
judged text stays whole unless it alone would leave the context less than a quarter of the
room (then it keeps its beginning); the context fields share what is left (short fields
whole, long ones cut). Documents keep their beginning; fields marked ``keep_end`` (a
conversation so far) keep their end, where the latest turns are. Cuts fall on token
boundaries of the original string, so the same texts give the same tokens in-process and on
a server.
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


def n_tokens(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


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


def fit(
    tokenizer: Tokenizer, context: Sequence[Field], target: str, room: int
) -> tuple[list[str], str]:
    """The context fields' texts and the judged text, cut so together they take at most
    ``room`` tokens (about: a cut adds a one-token mark)."""
    texts = [f.text.strip() for f in context]
    target = target.strip()
    target_offsets = _offsets(tokenizer, target)
    field_offsets = [_offsets(tokenizer, t) for t in texts]
    lengths = [len(o) for o in field_offsets]
    n_target, n_context = len(target_offsets), sum(lengths)
    room = max(0, room)
    if n_context + n_target <= room:
        return texts, target
    reserve = min(n_context, room // 4)
    keep_target = min(n_target, room - reserve)
    keep_fields = share(room - keep_target, lengths)
    bodies = []
    for f, text, offsets, keep in zip(context, texts, field_offsets, keep_fields, strict=True):
        body = cut(text, offsets, keep, keep_end=f.keep_end)
        bodies.append("…" if offsets and keep == 0 else body)
    return bodies, cut(target, target_offsets, keep_target, keep_end=False)


# --- the encoder: a sentence pair ------------------------------------------------------------


def pair_texts(
    tokenizer: Tokenizer,
    instruction: str,
    context: Sequence[Field],
    target: str,
    max_len: int,
) -> tuple[str, str]:
    """The two texts of the cross-encoder's input, cut to fit ``max_len`` tokens."""
    labels = [f"{f.label}:" for f in context]
    fixed = n_tokens(tokenizer, instruction) + sum(n_tokens(tokenizer, x) for x in labels)
    room = max_len - 3 - fixed - 2 * len(context)  # 3 special tokens, cut marks
    bodies, second = fit(tokenizer, context, target, room)
    first = [instruction.strip()] + [
        f"{f.label}: {b}" for f, b in zip(context, bodies, strict=True)
    ]
    return "\n".join(first), second


# --- the decoder: one chat turn in three segments -----------------------------------------------


@dataclass(frozen=True)
class ChatFrame:
    """The text the chat template puts before a user message and after it (up to the opening
    of the assistant's turn)."""

    before: str
    after: str

    @classmethod
    def of(cls, tokenizer: Any) -> ChatFrame:
        marker = "\u2063MESSAGE\u2063"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": marker}], add_generation_prompt=True, tokenize=False
        )
        before, found, after = str(text).partition(marker)
        if not found:
            raise ValueError("the chat template does not show the user's message verbatim")
        return cls(before, after)


def prompt_segments(
    tokenizer: Tokenizer,
    frame: ChatFrame,
    instruction: str,
    context: Sequence[Field],
    target_label: str,
    target: str,
    max_len: int,
) -> tuple[str, str, str]:
    """The decoder's prompt as (context, judged text, instruction) segments; their
    concatenation is the whole prompt, at most about ``max_len`` tokens."""
    instruction = instruction.strip()
    fixed = (
        n_tokens(tokenizer, frame.before + frame.after + instruction)
        + sum(n_tokens(tokenizer, f"{f.label}: \n") for f in context)
        + n_tokens(tokenizer, f"{target_label}: \n")
    )
    room = max_len - fixed - len(context) - 1  # cut marks
    bodies, judged = fit(tokenizer, context, target, room)
    lines = "".join(f"{f.label}: {b}\n" for f, b in zip(context, bodies, strict=True))
    return frame.before + lines, f"{target_label}: {judged}\n", instruction + frame.after


def to_scale(probability: float, scale: tuple[int, int]) -> float:
    """A score in [0, 1] (the model's sigmoid output) placed on a criterion's scale."""
    lo, hi = scale
    return lo + (hi - lo) * probability


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
