"""Hidden states of a base's frozen lower layers, computed once, shared by every model of a run.

What a model reads is a chain of segments (nodes). The encoder reads each example as one node;
the decoder reads (context) -> (judged text) -> (instruction), and examples that share a
beginning share its nodes. A node's key is a hash of its tokens and its parent's key, so equal
beginnings are one node and are computed once.

A ``Store`` keeps, for every node, the hidden states entering the first trained layer
(float16), in one tensor; it is saved to disk and memory-mapped when a later run (another
seed, another setting) needs the same nodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Node:
    """One segment of tokens, read after its parent's."""

    key: str
    parent: str | None
    ids: tuple[int, ...]
    types: tuple[int, ...] = ()
    """Token types (the encoder's sentence A/B); empty for the decoder."""


def node_key(parent: str | None, ids: Sequence[int], types: Sequence[int] = ()) -> str:
    h = hashlib.sha256()
    h.update((parent or "").encode())
    h.update(b"\x00" + ",".join(map(str, ids)).encode())
    h.update(b"\x00" + ",".join(map(str, types)).encode())
    return h.hexdigest()[:24]


def make_chain(
    segments: Sequence[Sequence[int]], types: Sequence[Sequence[int]] = ()
) -> list[Node]:
    """Nodes for consecutive token segments (each the child of the one before)."""
    chain: list[Node] = []
    parent: str | None = None
    for i, ids in enumerate(segments):
        t = tuple(types[i]) if types else ()
        node = Node(node_key(parent, ids, t), parent, tuple(ids), t)
        chain.append(node)
        parent = node.key
    return chain


@dataclass
class Inputs:
    """Every example's chain of node keys, and the nodes."""

    chains: dict[str, tuple[str, ...]]
    nodes: dict[str, Node]

    def tokens(self, uid: str) -> int:
        return sum(len(self.nodes[k].ids) for k in self.chains[uid])

    def subset(self, uids: Iterable[str]) -> Inputs:
        chains = {u: self.chains[u] for u in uids}
        keys = {k for c in chains.values() for k in c}
        return Inputs(chains, {k: self.nodes[k] for k in keys})


class Store:
    """Node key -> hidden states [tokens, dim] (float16), in one tensor."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.index: dict[str, tuple[int, int]] = {}
        self._parts: list[torch.Tensor] = []
        self._filled = 0
        self._data: torch.Tensor | None = None

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def add(self, key: str, hidden: torch.Tensor) -> None:
        if key in self.index:
            return
        if self._data is not None:  # adding to a loaded store
            self._parts, self._data = [self._data], None
        self.index[key] = (self._filled, int(hidden.shape[0]))
        self._filled += int(hidden.shape[0])
        self._parts.append(hidden.detach().to(torch.float16).contiguous())

    @property
    def data(self) -> torch.Tensor:
        if self._data is None:
            empty = torch.zeros(0, self.dim, dtype=torch.float16)
            self._data = torch.cat(self._parts) if self._parts else empty
            self._parts = []
        return self._data

    def get(self, key: str) -> torch.Tensor:
        start, length = self.index[key]
        return self.data[start : start + length]

    @property
    def tokens(self) -> int:
        return self._filled

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self.index)
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "meta": meta,
                "keys": keys,
                "spans": torch.tensor([self.index[k] for k in keys], dtype=torch.long),
                "data": self.data,
            },
            tmp,
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> Store | None:
        """The store saved at ``path`` if it was made with ``meta``; None otherwise."""
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, mmap=True, weights_only=True)
        except (RuntimeError, OSError, EOFError):
            return None
        if saved.get("meta") != meta:
            return None
        store = cls(int(saved["data"].shape[1]))
        spans = saved["spans"].tolist()
        store.index = {k: (int(a), int(b)) for k, (a, b) in zip(saved["keys"], spans, strict=True)}
        store._data = saved["data"]
        store._filled = int(saved["data"].shape[0])
        return store


class Features:
    """Several stores read as one (a run keeps one store per task)."""

    def __init__(self, stores: Sequence[Store] = ()) -> None:
        self.stores = list(stores)

    def add_store(self, store: Store) -> None:
        self.stores.append(store)

    def __contains__(self, key: object) -> bool:
        return any(key in s for s in self.stores)

    def get(self, key: str) -> torch.Tensor:
        for s in self.stores:
            if key in s:
                return s.get(key)
        raise KeyError(key)
