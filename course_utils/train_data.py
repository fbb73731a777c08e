"""From a ``datasets.Dataset`` of text to batches of token blocks for causal-LM training.

Pipeline: :func:`tokenize_dataset` (rows -> one long 1-D tensor of token ids, through
``Dataset.map``) -> a sampler that cuts blocks of ``block_size + 1`` tokens out of it (inputs are
the first ``block_size``, targets the same shifted by one):

* :class:`RandomBlockSampler` -- a random start position per row, like nanoGPT's ``get_batch``;
* :class:`SequentialBlockSampler` -- the text packed into non-overlapping blocks, shuffled once
  per epoch, so each token is a target exactly once per epoch.

Both draw from their own seeded ``torch.Generator`` and have ``state_dict()`` /
``load_state_dict()``, so a resumed run gets exactly the batches the uninterrupted one would
have got. ``eval_batches(n)`` yields the same ``n`` batches on every call (a fixed evaluation
set, so successive evaluations are comparable).

Defined in chapter 5, Pretraining.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor]
EVAL_SEED_OFFSET = 1_000_003  # evaluation batches come from a generator of their own


def tokenize_dataset(ds: Any, encode: Callable[[str], Sequence[int]], text_column: str = "text",
                     format_row: Callable[[dict], str] | None = None, num_proc: int | None = None) -> torch.Tensor:
    """All rows of ``ds`` encoded and concatenated into one 1-D ``torch.long`` tensor [N].

    ``format_row(row) -> str`` turns a row into text (default: ``row[text_column]``); e.g. the
    Shakespeare rows become ``"SPEAKER:\\ntext\\n\\n"``. The encoding runs through
    ``Dataset.map(batched=True)`` so it can use several processes.
    """
    if not hasattr(ds, "map") or not hasattr(ds, "column_names"):
        raise TypeError(f"ds must be a datasets.Dataset, got {type(ds).__name__}")
    if format_row is None and text_column not in ds.column_names:
        raise ValueError(f"column {text_column!r} not in dataset columns {ds.column_names}")
    if not callable(encode):
        raise TypeError("encode must be a callable str -> list[int]")

    def _encode(batch: dict[str, list]) -> dict[str, list]:
        n = len(next(iter(batch.values())))
        rows = ({k: v[i] for k, v in batch.items()} for i in range(n))
        texts = [format_row(r) for r in rows] if format_row else batch[text_column]
        return {"ids": [list(encode(t)) for t in texts]}

    encoded = ds.map(_encode, batched=True, remove_columns=ds.column_names, num_proc=num_proc,
                     desc="tokenizing")
    chunks = [np.asarray(x, dtype=np.int64) for x in encoded["ids"]]
    if not chunks:
        raise ValueError("the dataset is empty: nothing to tokenize")
    return torch.from_numpy(np.concatenate(chunks))


def _check_ids(data: torch.Tensor, block_size: int, batch_size: int) -> None:
    if not isinstance(data, torch.Tensor) or data.dim() != 1 or data.dtype not in (torch.int64, torch.int32):
        raise TypeError("data must be a 1-D integer tensor of token ids [N]")
    for name, v in (("block_size", block_size), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if data.numel() < block_size + 1:
        raise ValueError(f"data has {data.numel()} tokens; need at least block_size + 1 = {block_size + 1}")


def pack_blocks(data: torch.Tensor, block_size: int) -> torch.Tensor:
    """Non-overlapping windows of ``block_size + 1`` tokens -> [n_blocks, block_size + 1].

    Windows start every ``block_size`` tokens, so neighbours share one token (the last target of
    a block is the first input of the next) and every token but the first is a target once.
    """
    _check_ids(data, block_size, 1)
    n = (data.numel() - 1) // block_size
    starts = torch.arange(n) * block_size
    return data[starts[:, None] + torch.arange(block_size + 1)]


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` (a tensor, or a tuple / list / dict of them) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _split(blocks: torch.Tensor) -> Batch:
    return blocks[:, :-1].long(), blocks[:, 1:].long()


class RandomBlockSampler:
    """``batch_size`` blocks at random offsets of ``data`` per call (nanoGPT's ``get_batch``).

    ``next_batch()`` -> ``(x [B, T], y [B, T])`` with ``y`` = ``x`` shifted by one token.
    """

    def __init__(self, data: torch.Tensor, block_size: int, batch_size: int, seed: int = 0) -> None:
        _check_ids(data, block_size, batch_size)
        self.data, self.block_size, self.batch_size, self.seed = data, block_size, batch_size, int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.batches_drawn = 0
        self._offsets = torch.arange(block_size + 1)

    def _draw(self, generator: torch.Generator) -> Batch:
        ix = torch.randint(self.data.numel() - self.block_size, (self.batch_size,), generator=generator)
        return _split(self.data[ix[:, None] + self._offsets])

    def next_batch(self) -> Batch:
        self.batches_drawn += 1
        return self._draw(self.generator)

    def eval_batches(self, n: int) -> Iterator[Batch]:
        """The same ``n`` batches on every call (drawn from a generator of their own)."""
        g = torch.Generator().manual_seed(self.seed + EVAL_SEED_OFFSET)
        for _ in range(n):
            yield self._draw(g)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "random", "seed": self.seed, "generator": self.generator.get_state(),
                "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "random":
            raise ValueError(f"not a RandomBlockSampler state: kind={state.get('kind')!r}")
        self.seed = int(state["seed"])
        self.generator.set_state(state["generator"])
        self.batches_drawn = int(state["batches_drawn"])


class SequentialBlockSampler:
    """The text packed into blocks (:func:`pack_blocks`) and visited in a seeded shuffled order
    that changes every epoch; the last incomplete batch of an epoch is dropped.

    ``next_batch()`` -> ``(x [B, T], y [B, T])``. State: epoch and position in it.
    """

    def __init__(self, data: torch.Tensor, block_size: int, batch_size: int, seed: int = 0,
                 shuffle: bool = True) -> None:
        _check_ids(data, block_size, batch_size)
        self.blocks = pack_blocks(data, block_size)
        if self.blocks.size(0) < batch_size:
            raise ValueError(f"only {self.blocks.size(0)} blocks of {block_size + 1} tokens; "
                             f"batch_size {batch_size} needs more data or smaller blocks")
        self.block_size, self.batch_size, self.seed, self.shuffle = block_size, batch_size, int(seed), shuffle
        self.epoch, self.position = 0, 0
        self._cached_order: tuple[int, torch.Tensor] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.blocks.size(0) // self.batch_size

    def _order(self, epoch: int) -> torch.Tensor:
        if self._cached_order is None or self._cached_order[0] != epoch:
            n = self.blocks.size(0)
            order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
                     if self.shuffle else torch.arange(n))
            self._cached_order = (epoch, order)
        return self._cached_order[1]

    def next_batch(self) -> Batch:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        order = self._order(self.epoch)
        rows = order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
        self.position += 1
        return _split(self.blocks[rows])

    def eval_batches(self, n: int) -> Iterator[Batch]:
        """The first ``n`` batches in block order (the same on every call)."""
        for i in range(min(n, self.batches_per_epoch)):
            yield _split(self.blocks[i * self.batch_size:(i + 1) * self.batch_size])

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "sequential", "seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "sequential":
            raise ValueError(f"not a SequentialBlockSampler state: kind={state.get('kind')!r}")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])


__all__ = ["to_device", "tokenize_dataset", "pack_blocks", "RandomBlockSampler", "SequentialBlockSampler", "Batch"]
