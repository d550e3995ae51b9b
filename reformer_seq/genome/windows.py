"""Genome windows: fixed-length slices of encoded records, and a torch Dataset of them.

* :func:`genome_windows` lists windows as ``(record, start, end)`` rows. Each record is split by
  region: the last ``val_fraction`` of its bases is validation, the rest training, so no base is
  shared between a training window and a validation window. Within a region, windows start every
  ``stride`` bases. The last window of a region may be shorter than ``seq_len``: with
  ``pad_last=True`` (default) it is kept when it adds bases no earlier window covered and the
  Dataset pads it with ``pad_id`` (``attention_mask`` False), so genomes shorter than ``seq_len``
  still give a window; with ``pad_last=False`` only full windows are kept. Windows whose share of
  N is above ``max_n_fraction``, and windows that are all N, are skipped.
* :class:`GenomeWindowDataset` serves windows as tensors, indexing into the (memory-mapped)
  records without copying the genome; reverse-complement augmentation (default: on for
  ``train``, off for ``val``) is a deterministic function of ``(seed, epoch, index)``.
* :func:`datasets_from_config` builds the train and validation datasets a run config asks for.

Batches of windows (collators, the sharded loader): :mod:`.batches`.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from .encoded import EncodedRecord
from .planted_repeats import RepeatPlanting, plant_repeats
from .tokenizers import NucleotideTokenizer, Tokenizer

if TYPE_CHECKING:
    from ..config import DataConfig

IGNORE_INDEX = -100  # label value that the loss ignores
SPLITS = ("train", "val", "all")
Records = Sequence[Union[EncodedRecord, np.ndarray]]


def _record_ids(rec: Union[EncodedRecord, np.ndarray]) -> np.ndarray:
    return rec.ids if isinstance(rec, EncodedRecord) else rec


# ---------------------------------------------------------------------- window positions
def split_bounds(length: int, split: str, val_fraction: float) -> tuple[int, int]:
    """The ``[lo, hi)`` region of a record of ``length`` bases used by ``split`` (train | val | all)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    cut = length - int(round(length * val_fraction))
    return {"train": (0, cut), "val": (cut, length), "all": (0, length)}[split]


def window_starts(lo: int, hi: int, seq_len: int, stride: int, pad_last: bool = True,
                  min_len: int = 2) -> np.ndarray:
    """Start positions of the windows over ``[lo, hi)``; shape (K,) int64.

    Full windows start at ``lo, lo + stride, ...``; with ``pad_last`` a shorter final window is
    added when it covers bases that no earlier window did (and has at least ``min_len`` bases).
    """
    if hi - lo < min_len:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(lo, hi, stride, dtype=np.int64)
    full = starts + seq_len <= hi
    if not pad_last:
        return starts[full]
    # A short window is kept if it is the first one or reaches past the previous window's end.
    new_bases = (starts == lo) | (starts - stride + seq_len < hi)
    keep = full | (new_bases & (hi - starts >= min_len))
    return starts[keep]


def ambiguous_runs(ids: np.ndarray, ambiguous_ids: Sequence[int], chunk: int = 1 << 24
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Maximal runs of ambiguous ids (N) in ``ids``: ``(starts, ends)``, each (R,) int64, end exclusive.

    Works through ``ids`` in chunks so the temporary boolean arrays stay small for long records.
    """
    if not len(ambiguous_ids):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    table = np.zeros(max(256, max(ambiguous_ids) + 1), dtype=bool)
    table[list(ambiguous_ids)] = True
    single = ambiguous_ids[0] if len(ambiguous_ids) == 1 else None
    edges, prev = [], False
    for off in range(0, len(ids), chunk):
        part = np.asarray(ids[off:off + chunk])
        flags = part == single if single is not None else table[part]
        if flags[0] != prev:
            edges.append(np.array([off]))
        edges.append(np.flatnonzero(flags[1:] != flags[:-1]) + off + 1)
        prev = bool(flags[-1])
    change = np.concatenate(edges) if edges else np.zeros(0, np.int64)
    if prev:
        change = np.concatenate([change, [len(ids)]])
    return change[0::2].astype(np.int64), change[1::2].astype(np.int64)


def count_in_runs(run_starts: np.ndarray, run_ends: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How many positions of the sorted, disjoint runs fall in each ``[lo, hi)``; shape like ``lo``."""
    cum = np.concatenate([[0], np.cumsum(run_ends - run_starts)])

    def before(x: np.ndarray) -> np.ndarray:  # run positions < x
        i = np.searchsorted(run_ends, x, side="right")  # runs that end at or before x
        partial = np.where(i < len(run_starts), np.clip(x - run_starts[np.minimum(i, len(run_starts) - 1)], 0, None), 0)
        return cum[i] + partial

    if not len(run_starts):
        return np.zeros_like(np.asarray(lo))
    return before(np.asarray(hi)) - before(np.asarray(lo))


def genome_windows(records: Records, seq_len: int, stride: Optional[int] = None, split: str = "train",
                   val_fraction: float = 0.1, max_n_fraction: float = 0.5,
                   ambiguous_ids: Sequence[int] = NucleotideTokenizer.ambiguous_ids,
                   pad_last: bool = True) -> np.ndarray:
    """All windows of ``split`` over ``records``: (K, 3) int64 rows ``(record, start, end)``."""
    stride = stride or seq_len
    if seq_len < 2 or stride < 1:
        raise ConfigError(f"seq_len must be >= 2 and stride >= 1, got seq_len={seq_len}, stride={stride}")
    rows = []
    for r, rec in enumerate(records):
        ids = _record_ids(rec)
        lo, hi = split_bounds(len(ids), split, val_fraction)
        starts = window_starts(lo, hi, seq_len, stride, pad_last)
        ends = np.minimum(starts + seq_len, hi)
        n_starts, n_ends = ambiguous_runs(ids[lo:hi], ambiguous_ids)
        n_count = count_in_runs(n_starts + lo, n_ends + lo, starts, ends)
        length = ends - starts
        keep = (n_count <= max_n_fraction * length) & (n_count < length)
        rows.append(np.stack([np.full(int(keep.sum()), r), starts[keep], ends[keep]], axis=1))
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 3), np.int64)


# ---------------------------------------------------------------------- dataset
def sample_key(seed: int, epoch: int, index: int) -> int:
    """A 63-bit key for window ``index`` in ``epoch``: seeds its augmentation and masking."""
    a, b = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32)
    return (int(a) << 31) ^ int(b)


class GenomeWindowDataset(Dataset):
    """Windows of encoded records as ``{"input_ids": (L,) long, "attention_mask": (L,) bool, "key": int}``.

    ``L`` is ``seq_len``; a short final window is right-padded with ``pad_id``. With
    ``rc_augment`` (default: ``split == "train"``), about half the windows of each epoch are
    reverse-complemented, chosen by :func:`sample_key` ``(seed, epoch, index)``; ``key`` lets the
    masked collator draw the same masks for the same window and epoch in any worker or batch.
    """

    def __init__(self, records: Records, seq_len: int, tokenizer: Optional[Tokenizer] = None,
                 stride: Optional[int] = None, split: str = "train", val_fraction: float = 0.1,
                 max_n_fraction: float = 0.5, rc_augment: Optional[bool] = None, seed: int = 0,
                 pad_last: bool = True, planting: Optional[RepeatPlanting] = None) -> None:
        self.records = list(records)
        self.tokenizer = tokenizer or NucleotideTokenizer()
        self.seq_len, self.split, self.seed, self.epoch = seq_len, split, seed, 0
        self.rc_augment = (split == "train") if rc_augment is None else rc_augment
        self.planting = planting if split == "train" else None  # validation is never planted
        self.windows = genome_windows(self.records, seq_len, stride, split, val_fraction, max_n_fraction,
                                      self.tokenizer.ambiguous_ids, pad_last)

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation of ``epoch`` (call before each epoch; :func:`set_epoch` does both)."""
        self.epoch = epoch

    def window_ids(self, index: int) -> np.ndarray:
        """The raw ids of window ``index`` (forward strand); shape (end - start,), a view when possible."""
        r, start, end = (int(x) for x in self.windows[index])
        return _record_ids(self.records[r])[start:end]

    def is_reverse_complemented(self, index: int) -> bool:
        return self.rc_augment and bool(sample_key(self.seed, self.epoch, index) & 1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        key = sample_key(self.seed, self.epoch, index)
        ids = self.window_ids(index)
        if self.rc_augment and key & 1:
            ids = self.tokenizer.reverse_complement(ids)
        if self.planting is not None and self.planting.rate > 0:
            rng = np.random.default_rng([self.seed, key, 0x504C4E54])
            ids, _ = plant_repeats(ids, rng, self.planting, self.tokenizer.reverse_complement)
        out = np.full(self.seq_len, self.tokenizer.pad_id, dtype=np.int64)  # numpy: no torch threads
        out[:len(ids)] = ids
        mask = np.zeros(self.seq_len, dtype=bool)
        mask[:len(ids)] = True
        return {"input_ids": torch.from_numpy(out), "attention_mask": torch.from_numpy(mask), "key": key}


# ---------------------------------------------------------------------- from a DataConfig
def build_datasets(records: Records, cfg: DataConfig, tokenizer: Optional[Tokenizer] = None, seed: int = 0
                   ) -> tuple[GenomeWindowDataset, GenomeWindowDataset]:
    """Training and validation datasets from a :class:`~reformer_seq.config.DataConfig`."""
    dataset = functools.partial(GenomeWindowDataset, records, seq_len=cfg.seq_len, tokenizer=tokenizer,
                                stride=cfg.stride, val_fraction=cfg.val_fraction, max_n_fraction=cfg.max_n_fraction,
                                seed=seed, pad_last=cfg.pad_last)
    planting = None
    if cfg.plant_repeats > 0:
        planting = RepeatPlanting(cfg.plant_repeats, cfg.plant_copies, cfg.plant_min_len, cfg.plant_max_len,
                                  max_mutation=cfg.plant_max_mutation)
    train = dataset(split="train", rc_augment=cfg.rc_augment, planting=planting)
    val = dataset(split="val", rc_augment=False)
    return train, val


def datasets_from_config(paths: Union[str, Sequence[str]], cfg: DataConfig, seed: int = 0
                         ) -> tuple[GenomeWindowDataset, GenomeWindowDataset]:
    """Load (cached) genomes from ``paths`` with ``cfg``'s alphabet and options; train and val datasets."""
    from .encoded import load_genome
    from .tokenizers import make_tokenizer

    tokenizer = make_tokenizer(cfg.alphabet)
    records: list[EncodedRecord] = []
    for path in [paths] if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__") else paths:
        records += load_genome(path, tokenizer, cfg.cache_dir, cfg.strict, cfg.keep_softmask)
    return build_datasets(records, cfg, tokenizer, seed)
