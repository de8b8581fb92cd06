"""The SmolLM2 base: SmolLM2-135M-Instruct (the embedded model's weights, prepared by
``python -m embedded prepare``) with a scalar head, ``LlamaForSequenceClassification`` with
one label: the score is read at the prompt's last token. vLLM serves the saved folder with its
pooling runner (``/classify``), in float32.

The prompt is one chat turn in three segments (``metric.text.prompt_segments``): context,
judged text, instruction. Attention is causal, so a segment's hidden states depend only on
what comes before it: the frozen lower layers read each distinct beginning once (an article
once for its 16 summaries and 4 criteria) and their output is stored per segment
(``compute``, float32). The head is the top ``train_layers`` layers, the final norm and the
new one-output ``score``; the last layer is computed for the last token alone (its keys and
values still come from every token), the same numbers as the whole model.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from metric.data import Example
from metric.features import Features, Inputs, Node, Store, make_chain
from metric.text import ChatFrame, prompt_segments

NAME = "smollm2"
DEFAULT_MAX_LEN = 2048
CARD_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


class BaseMissing(RuntimeError):
    pass


def decoder_folder() -> Path:
    """The prepared SmolLM2-135M-Instruct folder (``python -m embedded prepare``)."""
    from embedded.weights import model_dir

    folder = model_dir()
    if not (folder / "config.json").is_file():
        raise BaseMissing(
            f"SmolLM2-135M-Instruct is not prepared at {folder}: run `python -m embedded prepare`"
        )
    return folder


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    from metric.encoder import quiet_transformers

    quiet_transformers()
    return AutoTokenizer.from_pretrained(str(folder))


def load_classifier(folder: Path) -> Any:
    """``LlamaForSequenceClassification`` with one label, float32 (a new head when ``folder``
    is the causal model)."""
    from transformers import AutoModelForSequenceClassification

    from metric.encoder import quiet_transformers

    quiet_transformers()
    model = AutoModelForSequenceClassification.from_pretrained(
        str(folder), num_labels=1, dtype=torch.float32
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    model.eval()
    return model


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of ``x`` [..., T, dh] with ``cos``/``sin`` [..., T, dh]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class _Attn:
    """Shapes of one Llama attention block."""

    def __init__(self, layer: Any, config: Any) -> None:
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.sa = layer.self_attn


def _project(layer: Any, cfg: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> Any:
    """Queries, keys and values [B, heads, T, dh] of normed ``x`` [B, T, d], rotated."""
    a = _Attn(layer, cfg)
    b, t, _ = x.shape
    q = a.sa.q_proj(x).view(b, t, a.heads, a.dim).transpose(1, 2)
    k = a.sa.k_proj(x).view(b, t, a.kv_heads, a.dim).transpose(1, 2)
    v = a.sa.v_proj(x).view(b, t, a.kv_heads, a.dim).transpose(1, 2)
    return _rope(q, cos[:, None], sin[:, None]), _rope(k, cos[:, None], sin[:, None]), v


def _attend(layer: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> Any:
    b, _, t, _ = q.shape
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return layer.self_attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class DecoderHead(nn.Module):
    """The trained top: ``train_layers`` layers (the last for the last token only), the final
    norm and a one-output ``score``."""

    def __init__(self, model: Any, frozen: int, seed: int) -> None:
        super().__init__()
        self.frozen = frozen
        self.config = model.config
        self.layers = nn.ModuleList(copy.deepcopy(list(model.model.layers[frozen:])))
        self.norm = copy.deepcopy(model.model.norm)
        self.rotary = copy.deepcopy(model.model.rotary_emb)
        self.score = nn.Linear(model.config.hidden_size, 1, bias=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.score.weight.normal_(0.0, model.config.initializer_range, generator=gen)

    def forward(self, chains: Sequence[Sequence[str]], feats: Features) -> torch.Tensor:
        # The batch's distinct nodes, laid flat: tokens, positions, owning node.
        order: dict[str, int] = {}
        parent_of: dict[str, int] = {}
        for chain in chains:
            for i, key in enumerate(chain):
                if key not in order:
                    order[key] = len(order)
                    if i:
                        parent_of[key] = order[chain[i - 1]]
        keys = list(order)
        parts = [feats.get(k).float() for k in keys]
        lengths = [int(p.shape[0]) for p in parts]
        starts, offset = [], 0
        for n in lengths:
            starts.append(offset)
            offset += n
        first_pos: dict[str, int] = {}
        for chain in chains:
            pos = 0
            for key in chain:
                first_pos[key] = pos
                pos += lengths[order[key]]
        hidden = torch.cat(parts)[None]  # [1, N, d]
        positions = torch.cat(
            [torch.arange(n) + first_pos[k] for k, n in zip(keys, lengths, strict=True)]
        )[None]
        cos, sin = self.rotary(hidden, positions)
        if len(self.layers) > 1:
            owner = torch.repeat_interleave(torch.arange(len(keys)), torch.tensor(lengths))
            ancestor = torch.eye(len(keys), dtype=torch.bool)
            for key in keys:  # ancestor[i, j]: node j is node i or comes before it
                j = order[key]
                p = parent_of.get(key)
                while p is not None:
                    ancestor[j, p] = True
                    p = parent_of.get(keys[p])
            same = owner[:, None] == owner[None, :]
            index = torch.arange(owner.shape[0])
            mask = ancestor[owner][:, owner] & (~same | (index[None, :] <= index[:, None]))
            lower: list[Any] = list(self.layers[:-1])
            for layer in lower:
                q, k, v = _project(layer, self.config, layer.input_layernorm(hidden), cos, sin)
                hidden = hidden + _attend(layer, q, k, v, mask[None, None])
                hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        # The top layer, for each chain's last token over the chain's tokens.
        top: Any = self.layers[-1]
        _, k, v = _project(top, self.config, top.input_layernorm(hidden), cos, sin)
        index_rows = []
        for chain in chains:
            index_rows.append(
                torch.cat([torch.arange(lengths[order[c]]) + starts[order[c]] for c in chain])
            )
        width = max(r.shape[0] for r in index_rows)
        gather = torch.zeros(len(chains), width, dtype=torch.long)
        valid = torch.zeros(len(chains), width, dtype=torch.bool)
        for i, r in enumerate(index_rows):
            gather[i, : r.shape[0]] = r
            valid[i, : r.shape[0]] = True
        last = torch.tensor([int(r[-1]) for r in index_rows])
        h_last = hidden[0, last][:, None]  # [B, 1, d]
        q, _, _ = _project(
            top,
            self.config,
            top.input_layernorm(h_last),
            cos[0, last][:, None],
            sin[0, last][:, None],
        )
        keys_b = k[0][:, gather].transpose(0, 1)  # [B, kvh, W, dh]
        values_b = v[0][:, gather].transpose(0, 1)
        out = h_last + _attend(top, q, keys_b, values_b, valid[:, None, None, :])
        out = out + top.mlp(top.post_attention_layernorm(out))
        return self.score(self.norm(out[:, 0])).squeeze(-1)

    def into(self, model: Any) -> Any:
        """``model`` (a base ``LlamaForSequenceClassification``) with this top put in."""
        for i, layer in enumerate(self.layers):
            model.model.layers[self.frozen + i].load_state_dict(layer.state_dict())
        model.model.norm.load_state_dict(self.norm.state_dict())
        model.score.load_state_dict(self.score.state_dict())
        return model


class DecoderBase:
    """SmolLM2-135M-Instruct with a scalar head: inputs, frozen layers, head, saving."""

    name = NAME
    kind = "decoder"
    card_base = CARD_BASE
    description = "SmolLM2-135M-Instruct, LlamaForSequenceClassification (one label)"

    def __init__(self, *, max_len: int = DEFAULT_MAX_LEN, train_layers: int = 1) -> None:
        self.folder = decoder_folder()
        self.tokenizer = load_tokenizer(self.folder)
        self.model = load_classifier(self.folder)
        self.frame = ChatFrame.of(self.tokenizer)
        self.max_len = max_len
        self.layers = int(self.model.config.num_hidden_layers)
        self.train_layers = max(1, min(train_layers, self.layers))
        self.frozen = self.layers - self.train_layers
        self.dim = int(self.model.config.hidden_size)

    def segments(self, example: Example) -> tuple[str, str, str]:
        return prompt_segments(
            self.tokenizer,
            self.frame,
            example.instruction,
            example.context,
            example.target_label,
            example.target,
            self.max_len,
        )

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def inputs(self, examples: Iterable[Example]) -> Inputs:
        chains: dict[str, tuple[str, ...]] = {}
        nodes: dict[str, Node] = {}
        ids_of: dict[str, list[int]] = {}
        for ex in examples:
            if ex.uid in chains:
                continue
            segs = []
            for text in self.segments(ex):
                if text not in ids_of:
                    ids_of[text] = self._ids(text)
                segs.append(ids_of[text])
            chain = make_chain(segs)
            for node in chain:
                nodes[node.key] = node
            chains[ex.uid] = tuple(n.key for n in chain)
        return Inputs(chains, nodes)

    @torch.no_grad()
    def compute(
        self,
        inputs: Inputs,
        stores: Mapping[int, Store],
        *,
        chunk_tokens: int = 8192,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """For every node of ``inputs`` not yet stored, the output of the lowest ``n`` layers
        into ``stores[n]`` (one pass for all ``n``)."""
        _Trees(self, inputs, stores, chunk_tokens, progress).run()

    def head(self, seed: int) -> DecoderHead:
        return DecoderHead(self.model, self.frozen, seed)

    def save(self, head: nn.Module, folder: Path) -> Path:
        assert isinstance(head, DecoderHead)
        model = head.into(load_classifier(self.folder))
        model.config.id2label = {0: "score"}
        model.config.label2id = {"score": 0}
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        return folder


class _Trees:
    """The frozen layers over a forest of segments: a level at a time, each node attending to
    its ancestors' keys and values (kept only while the nodes below need them). A level is
    taken in groups of at most about ``budget`` tokens below them, so what is kept stays
    bounded however many children a node has."""

    def __init__(
        self,
        base: DecoderBase,
        inputs: Inputs,
        stores: Mapping[int, Store],
        budget: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.base, self.inputs, self.stores = base, inputs, stores
        self.top = max(stores)
        self.budget, self.progress = budget, progress
        self.children: dict[str | None, list[str]] = defaultdict(list)
        for node in inputs.nodes.values():
            self.children[node.parent].append(node.key)
        self.size: dict[str, int] = {}
        self.missing: dict[str, bool] = {}
        self.kv: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _visit(self, root: str) -> None:
        """Subtree sizes, and whether anything below a node is missing (post-order)."""
        stack = [(root, False)]
        while stack:
            k, done = stack.pop()
            below = self.children.get(k, [])
            if done:
                self.size[k] = len(self.inputs.nodes[k].ids) + sum(self.size[c] for c in below)
                here = any(k not in s for s in self.stores.values())
                self.missing[k] = here or any(self.missing[c] for c in below)
            else:
                stack.append((k, True))
                stack.extend((c, False) for c in below)

    def run(self) -> None:
        roots = sorted(self.children[None])
        for r in roots:
            self._visit(r)
        self._grow([(r, [], 0) for r in roots if self.missing[r]])

    def _grow(self, level: list[tuple[str, list[str], int]]) -> None:
        """Compute ``level`` (node, ancestors root first, start position) and all below it."""
        groups: list[list[tuple[str, list[str], int]]] = []
        group: list[tuple[str, list[str], int]] = []
        total = 0
        for item in level:
            n = self.size[item[0]]
            if group and total + n > self.budget:
                groups.append(group)
                group, total = [], 0
            group.append(item)
            total += n
        if group:
            groups.append(group)
        for group in groups:
            for batch in self._batches(group):
                self._level(batch)
            below = []
            for key, chain, start in group:
                at = start + len(self.inputs.nodes[key].ids)
                below += [
                    (c, [*chain, key], at) for c in self.children.get(key, []) if self.missing[c]
                ]
            if below:
                self._grow(below)
            for key, _, _ in group:
                self.kv.pop(key, None)

    def _batches(
        self, items: list[tuple[str, list[str], int]], budget: int = 4096
    ) -> list[list[tuple[str, list[str], int]]]:
        ordered = sorted(items, key=lambda it: len(self.inputs.nodes[it[0]].ids))
        out: list[list[tuple[str, list[str], int]]] = []
        batch: list[tuple[str, list[str], int]] = []
        longest = 0
        for it in ordered:
            n = len(self.inputs.nodes[it[0]].ids)
            if batch and max(longest, n) * (len(batch) + 1) > budget:
                out.append(batch)
                batch, longest = [], 0
            batch.append(it)
            longest = max(longest, n)
        if batch:
            out.append(batch)
        return out

    def _level(self, batch: list[tuple[str, list[str], int]]) -> None:
        llama, cfg = self.base.model.model, self.base.model.config
        keys = [k for k, _, _ in batch]
        own = [len(self.inputs.nodes[k].ids) for k in keys]
        past = [start for _, _, start in batch]
        t_max, p_max = max(own), max(past)
        ids = torch.zeros(len(batch), t_max, dtype=torch.long)
        for i, k in enumerate(keys):
            ids[i, : own[i]] = torch.tensor(self.inputs.nodes[k].ids)
        hidden = llama.embed_tokens(ids)
        positions = torch.tensor(past)[:, None] + torch.arange(t_max)[None]
        cos, sin = llama.rotary_emb(hidden, positions)
        t = torch.arange(t_max)
        own_ok = (t[None, None, :] <= t[None, :, None]) & (
            t[None, None, :] < torch.tensor(own)[:, None, None]
        )  # [B, T, T]
        past_ok = torch.arange(p_max)[None, None, :] < torch.tensor(past)[:, None, None]
        mask = torch.cat([past_ok.expand(-1, t_max, -1), own_ok], dim=2)[:, None]
        keeps = [bool(self.children.get(k)) for k in keys]
        for i, layer in enumerate(llama.layers[: self.top]):
            q, k, v = _project(layer, cfg, layer.input_layernorm(hidden), cos, sin)
            if p_max:
                pk = k.new_zeros(len(batch), k.shape[1], p_max, k.shape[3])
                pv = torch.zeros_like(pk)
                for b, (_, chain, start) in enumerate(batch):
                    if start:
                        pk[b, :, :start] = torch.cat([self.kv[a][i][0] for a in chain], dim=1)
                        pv[b, :, :start] = torch.cat([self.kv[a][i][1] for a in chain], dim=1)
                k_all, v_all = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
            else:
                k_all, v_all = k, v
            hidden = hidden + _attend(layer, q, k_all, v_all, mask)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
            for b, key in enumerate(keys):
                if keeps[b]:
                    self.kv.setdefault(key, []).append((k[b, :, : own[b]], v[b, :, : own[b]]))
                if i + 1 in self.stores:
                    self.stores[i + 1].add(key, hidden[b, : own[b]])
        if self.progress is not None:
            self.progress(sum(own))
