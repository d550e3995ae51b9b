"""From windows to batches: collators for the two objectives and a sharded data loader.

* :class:`CausalCollator` (next base: ``labels[t] = input_ids[t+1]``) and :class:`MaskedCollator`
  (BERT-style 80/10/10 masking of a ``mask_prob`` share of the bases, optional spans) build
  ``{"input_ids", "labels", "attention_mask"}`` batches; ``labels`` is -100 where nothing is
  predicted (N, padding, unmasked positions).
* :func:`make_dataloader` shards windows across ``torch.distributed`` ranks (disjoint, the same
  count on every rank) with a per-epoch shuffle that depends only on ``(seed, epoch)``.
"""
from __future__ import annotations

import math
from collections.abc import Sized
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import ConfigError
from .tokenizers import NucleotideTokenizer, Tokenizer
from .windows import IGNORE_INDEX


# ---------------------------------------------------------------------- collators
Item = Union[dict[str, Any], np.ndarray, torch.Tensor]


def _to_numpy(x: Any, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(-1)


def pad_batch(items: Sequence[Item], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[Optional[int]]]:
    """Stack items (dicts, arrays or tensors of ids) right-padded to the longest.

    Returns ``input_ids`` (B, L) long, ``attention_mask`` (B, L) bool and each item's ``key`` (or None).
    Built in numpy: torch's intra-op threads add nothing here and stall on a busy machine.
    """
    seqs, masks = [], []
    keys: list[Optional[int]] = []
    for it in items:
        d: dict[str, Any] = it if isinstance(it, dict) else {"input_ids": it}
        seqs.append(_to_numpy(d["input_ids"], np.int64))
        m = d.get("attention_mask")
        masks.append(np.ones(len(seqs[-1]), dtype=bool) if m is None else _to_numpy(m, bool))
        keys.append(d.get("key"))
    L = max(len(s) for s in seqs)
    input_ids = np.full((len(seqs), L), pad_id, dtype=np.int64)
    attention = np.zeros((len(seqs), L), dtype=bool)
    for b, (s, m) in enumerate(zip(seqs, masks)):
        input_ids[b, :len(s)], attention[b, :len(s)] = s, m
    input_ids[~attention] = pad_id
    return torch.from_numpy(input_ids), torch.from_numpy(attention), keys


def target_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer: Tokenizer) -> torch.Tensor:
    """(B, L) bool: positions holding a real prediction target (a base, not N, pad or special)."""
    ids, mask = input_ids.cpu().numpy(), attention_mask.cpu().numpy()
    return torch.from_numpy(tokenizer.target_table[ids] & mask)


def causal_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer: Tokenizer) -> torch.Tensor:
    """Next-token labels (B, L) long: ``labels[:, t] = input_ids[:, t+1]``; -100 at the last
    position and wherever the next token is N, padding or special."""
    ids = input_ids.cpu().numpy()
    is_target = target_mask(input_ids, attention_mask, tokenizer).numpy()
    labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    labels[:, :-1] = np.where(is_target[:, 1:], ids[:, 1:], IGNORE_INDEX)
    return torch.from_numpy(labels)


class CausalCollator:
    """Batches for the next-base objective: ``input_ids``, ``labels`` (see :func:`causal_labels`),
    ``attention_mask``."""

    def __init__(self, tokenizer: Optional[Tokenizer] = None) -> None:
        self.tokenizer = tokenizer or NucleotideTokenizer()

    def __call__(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        input_ids, attention, _ = pad_batch(items, self.tokenizer.pad_id)
        return {"input_ids": input_ids, "labels": causal_labels(input_ids, attention, self.tokenizer),
                "attention_mask": attention}


def choose_mask_positions(candidates: np.ndarray, mask_prob: float, mask_span: int,
                          rng: np.random.Generator, max_span_factor: int = 10) -> np.ndarray:
    """Sorted positions to mask: exactly ``round(mask_prob * candidates.sum())`` candidate positions.

    ``mask_span == 1``: drawn without replacement. ``mask_span > 1``: spans starting at random
    candidates with geometric lengths of mean ``mask_span`` (capped at ``max_span_factor`` times
    that); positions inside a span that are not candidates (N, padding) are not chosen.
    """
    pos = np.flatnonzero(candidates)
    target = int(round(mask_prob * len(pos)))
    if target == 0:
        return np.zeros(0, dtype=np.int64)
    if mask_span <= 1:
        return np.sort(rng.choice(pos, target, replace=False))
    chosen = np.zeros(len(candidates), dtype=bool)
    count = 0
    while count < target:
        k = max(1, math.ceil((target - count) / mask_span))
        starts = rng.choice(pos, k)
        lens = np.minimum(rng.geometric(1.0 / mask_span, k), max_span_factor * mask_span)
        offsets = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        new = np.repeat(starts, lens) + offsets
        new = new[new < len(candidates)]
        new = new[candidates[new] & ~chosen[new]]
        _, first = np.unique(new, return_index=True)
        new = new[np.sort(first)][:target - count]
        chosen[new] = True
        count += len(new)
    return np.flatnonzero(chosen)


class MaskedCollator:
    """Batches for the masked objective (BERT; SpanBERT-style spans when ``mask_span > 1``).

    Of the bases (not N, not padding) of each window, exactly ``round(mask_prob * n)`` are chosen;
    each chosen position becomes ``mask_id`` with probability 0.8, a uniformly random base with
    0.1, and stays with 0.1. ``labels`` holds the original id at chosen positions, else -100.
    Randomness comes from each item's ``key`` (deterministic per seed, epoch and window) or, for
    items without one, from the collator's own generator seeded with ``seed``.
    """

    def __init__(self, tokenizer: Optional[Tokenizer] = None, mask_prob: float = 0.15, mask_span: int = 1,
                 seed: int = 0, mask_frac: float = 0.8, random_frac: float = 0.1) -> None:
        if not 0.0 <= mask_prob <= 1.0 or mask_span < 1:
            raise ConfigError(f"mask_prob must be in [0, 1] and mask_span >= 1, got {mask_prob}, {mask_span}")
        self.tokenizer = tokenizer or NucleotideTokenizer()
        self.mask_prob, self.mask_span = mask_prob, mask_span
        self.mask_frac, self.random_frac = mask_frac, random_frac
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.base_ids = np.asarray(self.tokenizer.base_ids, dtype=np.int64)

    def _rng(self, key: Optional[int]) -> np.random.Generator:
        return self.rng if key is None else np.random.default_rng([self.seed, key, 0x4D4C4D])

    def mask_one(self, ids: np.ndarray, candidates: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Masked inputs and labels for one sequence; ``ids`` (L,) int64, both outputs (L,) int64."""
        inputs, labels = ids.copy(), np.full_like(ids, IGNORE_INDEX)
        pos = choose_mask_positions(candidates, self.mask_prob, self.mask_span, rng)
        labels[pos] = ids[pos]
        r = rng.random(len(pos))
        to_mask = r < self.mask_frac
        to_random = (r >= self.mask_frac) & (r < self.mask_frac + self.random_frac)
        inputs[pos[to_mask]] = self.tokenizer.mask_id
        inputs[pos[to_random]] = rng.choice(self.base_ids, int(to_random.sum()))
        return inputs, labels

    def __call__(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        input_ids, attention, keys = pad_batch(items, self.tokenizer.pad_id)
        candidates = target_mask(input_ids, attention, self.tokenizer).numpy()
        ids_np = input_ids.numpy()
        out_ids, out_labels = [], []
        for b in range(len(ids_np)):
            inp, lab = self.mask_one(ids_np[b], candidates[b], self._rng(keys[b]))
            out_ids.append(inp)
            out_labels.append(lab)
        return {"input_ids": torch.from_numpy(np.stack(out_ids)), "labels": torch.from_numpy(np.stack(out_labels)),
                "attention_mask": attention}


def make_collator(objective: str, tokenizer: Optional[Tokenizer] = None, mask_prob: float = 0.15,
                  mask_span: int = 1, seed: int = 0) -> Union[CausalCollator, MaskedCollator]:
    """The collator of ``objective`` (``causal`` or ``masked``)."""
    if objective == "causal":
        return CausalCollator(tokenizer)
    if objective == "masked":
        return MaskedCollator(tokenizer, mask_prob, mask_span, seed)
    raise ConfigError(f"objective must be 'causal' or 'masked', got {objective!r}")


# ---------------------------------------------------------------------- sharded loading
def dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised torch.distributed group, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardedSampler(Sampler[int]):
    """Indices of this rank's shard: a ``(seed, epoch)`` permutation (or identity), every
    ``world_size``-th element from ``rank``.

    ``even=True`` drops the last ``n % world_size`` indices of the order so every rank gets the
    same count and shards stay disjoint (with fewer windows than ranks, the order is repeated
    instead, so every rank gets one). ``even=False`` keeps all indices; counts may differ by one.
    """

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, rank: Optional[int] = None,
                 world_size: Optional[int] = None, even: bool = True) -> None:
        auto_rank, auto_world = dist_rank_world()
        self.rank = auto_rank if rank is None else rank
        self.world_size = auto_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank must be in [0, world_size), got rank={self.rank}, world_size={self.world_size}")
        self.n, self.shuffle, self.seed, self.even, self.epoch = n, shuffle, seed, even, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch; shape (len(self),) int64."""
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        if self.even and self.n:
            if self.n >= self.world_size:
                order = order[: self.n - self.n % self.world_size]
            else:
                order = np.resize(order, self.world_size)
        return order[self.rank::self.world_size].astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        if self.even and self.n:
            return max(self.n // self.world_size, 1)
        return len(range(self.rank, self.n, self.world_size))


def make_dataloader(dataset: Dataset, batch_size: int, collate_fn: Any, shuffle: Optional[bool] = None,
                    seed: int = 0, rank: Optional[int] = None, world_size: Optional[int] = None,
                    num_workers: int = 0, even: bool = True, drop_last: bool = False,
                    generator: Optional[torch.Generator] = None) -> DataLoader:
    """A DataLoader over this rank's shard of ``dataset`` (all of it without torch.distributed).

    ``shuffle`` defaults to True for a training dataset. Call :func:`set_epoch` before each epoch
    to reshuffle and redraw augmentation; batches are dicts from ``collate_fn``.
    """
    if shuffle is None:
        shuffle = getattr(dataset, "split", "train") == "train"
    if not isinstance(dataset, Sized):
        raise TypeError(f"make_dataloader needs a dataset with a length (map-style), got {type(dataset).__name__}")
    sampler = ShardedSampler(len(dataset), shuffle, seed, rank, world_size, even)
    if generator is None:  # the loader's own seed source: iterating never draws from torch's global RNG
        generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                      num_workers=num_workers, drop_last=drop_last, persistent_workers=False,
                      generator=generator)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Set ``epoch`` on the loader's sampler and dataset (shuffle order and augmentation)."""
    for obj in (loader.sampler, loader.dataset):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


