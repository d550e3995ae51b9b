"""Embedding options and window plans: long records run as overlapping windows of at most the
model's length; each base's vector comes from the window whose centre is nearest to it."""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import SeqformerError

DEFAULT_LAYER = -1  # the final output; chosen by benchmarks/downstream.py's layer sweep (docs/studies.md)
POOL_MODES = ("mean", "max", "none")
PRECISIONS = ("fp32", "bf16")
FORMATS = ("npz", "h5")
SUFFIX_FORMATS = {".npz": "npz", ".h5": "h5", ".hdf5": "h5", ".hdf": "h5"}


@dataclass(frozen=True)
class Window:
    """One window of a record: it runs on bases ``[start, end)`` and owns ``[keep_start, keep_end)``."""

    start: int
    end: int
    keep_start: int
    keep_end: int


def default_overlap(window: int) -> int:
    """The default overlap between consecutive windows: an eighth of the window."""
    return window // 8


def check_window(window: int, overlap: int, max_seq_len: int) -> None:
    """Raise SeqformerError unless ``1 <= window <= max_seq_len`` and ``0 <= overlap < window``."""
    if window < 1:
        raise SeqformerError(f"--window must be a positive number of bases, got {window}")
    if window > max_seq_len:
        raise SeqformerError(f"--window {window:,} exceeds the checkpoint's max_seq_len {max_seq_len:,}; "
                             f"use --window {max_seq_len} or less (longer records are split into windows)")
    if not 0 <= overlap < window:
        raise SeqformerError(f"--overlap must be in [0, window) = [0, {window:,}), got {overlap:,}; "
                             f"e.g. --overlap {default_overlap(window)} (an eighth of the window)")


def plan_windows(length: int, window: int, overlap: int) -> list[Window]:
    """Windows covering ``[0, length)``: one if ``length <= window``, else windows of exactly
    ``window`` bases starting every ``window - overlap`` bases, the last ending at ``length``.

    Each base is owned by the window whose centre is nearest (ties: the later window), so the
    owned ranges partition ``[0, length)`` in order.
    """
    if length <= window:
        return [Window(0, length, 0, length)]
    stride = window - overlap
    starts = list(range(0, length - window, stride)) + [length - window]
    # Equal-length windows: the nearest centre is the one where the base is most central.
    # Between windows i and i+1 the centres' midpoint is (s_{i+1} + e_i - 1) / 2.
    cuts = [0] + [(starts[i + 1] + starts[i] + window) // 2 for i in range(len(starts) - 1)] + [length]
    return [Window(s, s + window, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]


