"""The frozen layers' output for a run's inputs, kept on disk per base, task and depth.

Computing the frozen lower layers is most of a run's work (the decoder's trunk takes hours on
two cores), and the result depends only on the base's weights and the tokens read. Stores are
saved under the cache folder (``~/.cache/refed/metric`` by default) as
``BASE-LAYERS-TASK.pt`` and reused by any later run, seed or setting that reads the same
tokens; nodes a store lacks are computed and added. While a task is computed its stores are
saved every ``save_every`` seconds as well, so a stopped run (Ctrl-C, a kill, the end of a
session) keeps what it computed: the next run computes only the nodes still missing (with the
ancestors their attention needs).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from metric.features import Features, Inputs, Store

STORE_VERSION = 1


class Computes(Protocol):
    name: str
    folder: Path
    dim: int
    layers: int

    def compute(
        self,
        inputs: Inputs,
        stores: Mapping[int, Store],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> None: ...


def default_cache_dir() -> Path:
    from embedded.weights import default_cache_dir as refed_cache

    return refed_cache() / "metric"


def weights_id(folder: Path) -> str:
    """Names the weights: a hash of the config and the weight files' sizes."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


class Progress:
    """Tokens done against a total, told every ``every`` seconds with a rate and an estimate."""

    def __init__(
        self, label: str, total: int, log: Callable[[str], None], every: float = 120
    ) -> None:
        self.label, self.total, self.log, self.every = label, total, log, every
        self.done = 0
        self.start = self.last = time.monotonic()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / max(1e-9, now - self.start)
            left = (self.total - self.done) / max(rate, 1e-9)
            self.log(
                f"{self.label}: {self.done:,}/{self.total:,} tokens, {rate:.0f} tokens/s, "
                f"about {left / 60:.0f} min left"
            )


def _save_stores(
    stores: Mapping[int, Store], paths: Mapping[int, Path], metas: Mapping[int, dict[str, Any]]
) -> None:
    for n, store in stores.items():
        store.save(paths[n], metas[n])


class Saver:
    """Passes progress on, and saves the stores when ``every`` seconds have passed since the
    last save (called between batches, when every stored node is whole)."""

    def __init__(
        self,
        progress: Callable[[int], None],
        save: Callable[[], None] | None,
        every: float,
    ) -> None:
        self.progress, self.save, self.every = progress, save, every
        self.last = time.monotonic()

    def __call__(self, n: int) -> None:
        self.progress(n)
        if self.save is not None and time.monotonic() - self.last >= self.every:
            self.save()
            self.last = time.monotonic()


def trunk(
    base: Computes,
    inputs: Mapping[str, Inputs],
    depths: Sequence[int],
    *,
    cache_dir: Path | None,
    log: Callable[[str], None],
    save_every: float = 600,
) -> dict[int, Features]:
    """For each depth ``n`` in ``depths``, the output of the lowest ``n`` layers for every
    node of every task's inputs (loaded from the cache, the rest computed and saved: at the
    end of each task, and every ``save_every`` seconds while it is computed)."""
    wid = weights_id(base.folder)
    out: dict[int, Features] = {n: Features() for n in depths}
    for task, task_inputs in inputs.items():
        stores: dict[int, Store] = {}
        paths: dict[int, Path] = {}
        metas: dict[int, dict[str, Any]] = {}
        for n in depths:
            metas[n] = {"version": STORE_VERSION, "base": base.name, "weights": wid, "layers": n}
            path = (cache_dir or Path("/nonexistent")) / f"{base.name}-{n}of{base.layers}-{task}.pt"
            loaded = Store.load(path, metas[n]) if cache_dir is not None else None
            stores[n] = loaded or Store(base.dim)
            paths[n] = path
        save_all = partial(_save_stores, stores, paths, metas)
        missing = [k for k in task_inputs.nodes if any(k not in s for s in stores.values())]
        if missing:
            total = sum(len(task_inputs.nodes[k].ids) for k in missing)
            start = time.monotonic()
            kept = " (the rest from an earlier run)" if len(stores[max(depths)]) else ""
            log(
                f"{base.name} {task}: computing the lowest {max(depths)} layers for "
                f"{len(missing):,} segments ({total:,} tokens){kept}"
            )
            progress = Progress(f"{base.name} {task}", total, log)
            saver = Saver(progress, save_all if cache_dir is not None else None, save_every)
            base.compute(task_inputs, stores, progress=saver)
            log(f"{base.name} {task}: done in {time.monotonic() - start:.0f} s")
            if cache_dir is not None:
                save_all()
        for n in depths:
            out[n].add_store(stores[n])
    return out
