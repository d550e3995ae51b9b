"""The embedding engine: tokens through the model window by window (batched by length, optionally
averaged with the reverse complement), each window's owned bases stitched into its record's rows
and pooled; and the in-memory API :func:`embed_sequences`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ...errors import InputError, SeqformerError
from ...genome.tokenizers import NucleotideTokenizer, Tokenizer
from ...model.lm import ReformerLM
from ...runtime.device import autocast, resolve_device
from .plan import DEFAULT_LAYER, POOL_MODES, Window, check_window, default_overlap, plan_windows
from .sinks import _MemorySink, _Sink

@dataclass
class _Item:
    """One window of one strand of one record (window coordinates are on that strand)."""

    rec: int
    strand: int  # 0 forward, 1 reverse complement
    index: int  # window number within the record
    win: Window

    @property
    def length(self) -> int:
        return self.win.end - self.win.start


@dataclass
class _RecordState:
    remaining: int  # items not yet done
    sums: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (strand, window) -> (dim,) f64
    counts: dict[tuple[int, int], int] = field(default_factory=dict)


class _Engine:
    """Runs windows through the model and hands stitched rows or pooled vectors to a sink."""

    def __init__(self, model: ReformerLM, tokenizer: Tokenizer, pool: str, rc_average: bool,
                 window: Optional[int], overlap: Optional[int], batch_size: int, max_batch_tokens: Optional[int],
                 device: str, precision: str, layer: Optional[int] = None) -> None:
        if pool not in POOL_MODES:
            raise SeqformerError(f"--pool must be one of {', '.join(POOL_MODES)}, got {pool!r}")
        if batch_size < 1:
            raise SeqformerError(f"--batch-size must be >= 1, got {batch_size}")
        max_len = int(model.config.max_seq_len)
        self.window = max_len if window is None else int(window)
        self.overlap = default_overlap(self.window) if overlap is None else int(overlap)
        check_window(self.window, self.overlap, max_len)
        self.device = resolve_device(device)
        autocast(self.device, precision)  # validates
        self.precision = precision
        self.model = model.to(self.device).eval()
        self.tokenizer, self.pool, self.rc_average = tokenizer, pool, rc_average
        self.batch_size = batch_size
        self.max_batch_tokens = max(self.window, max_batch_tokens or 0)
        self.ambiguous = np.zeros(max(tokenizer.vocab_size, 1), dtype=bool)
        self.ambiguous[list(tokenizer.ambiguous_ids)] = True
        self.dim = int(model.config.dim)
        self.layer = model.resolve_layer(DEFAULT_LAYER if layer is None else layer)  # a block count

    # -------------------------------------------------------------- items and batches
    def _items(self, lengths: Sequence[int]) -> Iterator[_Item]:
        strands = (0, 1) if self.rc_average else (0,)
        for rec, L in enumerate(lengths):
            for k, w in enumerate(plan_windows(int(L), self.window, self.overlap)):
                for s in strands:
                    yield _Item(rec, s, k, w)

    def _batches(self, items: Iterator[_Item]) -> Iterator[list[_Item]]:
        """Groups of consecutive items, sorted by length (less padding), cut into batches."""
        lookahead = self.batch_size * 8
        group: list[_Item] = []
        tokens = 0
        for it in items:
            group.append(it)
            tokens += it.length
            if len(group) >= lookahead or tokens >= 8 * self.max_batch_tokens:
                yield from self._cut(group)
                group, tokens = [], 0
        if group:
            yield from self._cut(group)

    def _cut(self, group: list[_Item]) -> Iterator[list[_Item]]:
        group = sorted(group, key=lambda it: -it.length)  # stable: ties keep file order
        batch: list[_Item] = []
        for it in group:
            longest = batch[0].length if batch else it.length
            if batch and (len(batch) >= self.batch_size or longest * (len(batch) + 1) > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(it)
        if batch:
            yield batch

    def _tokens(self, ids: np.ndarray, it: _Item) -> np.ndarray:
        w, L = it.win, len(ids)
        if it.strand == 0:
            return np.asarray(ids[w.start:w.end])
        return self.tokenizer.reverse_complement(np.asarray(ids[L - w.end:L - w.start]))  # RC coords -> forward

    def _forward(self, toks: list[np.ndarray]) -> Tensor:
        """Hidden states (B, Lmax, dim) float32 for a batch of token arrays, padded and masked."""
        B, Lmax = len(toks), max(len(t) for t in toks)
        batch = np.full((B, Lmax), self.tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros((B, Lmax), dtype=bool)
        for i, t in enumerate(toks):
            batch[i, :len(t)] = t
            mask[i, :len(t)] = True
        x = torch.from_numpy(batch).to(self.device)
        m = None if mask.all() else torch.from_numpy(mask).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            h = self.model.encode(x, m, layer=self.layer)
        return h.float()

    # -------------------------------------------------------------- running
    def run(self, records: Sequence[np.ndarray], sink: _Sink, progress: bool = False) -> int:
        """Embed ``records`` (token id arrays) into ``sink``. Returns the number of all-N records."""
        from tqdm.auto import tqdm

        lengths = [len(r) for r in records]
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        n_strands = 2 if self.rc_average else 1
        state: dict[int, _RecordState] = {}
        n_windows = {rec: len(plan_windows(L, self.window, self.overlap)) for rec, L in enumerate(lengths)}
        empty = 0
        scale = 0.5 if self.rc_average else 1.0
        bar = tqdm(total=int(offsets[-1]) * n_strands, unit="b", unit_scale=True, disable=not progress,
                   desc="embedding" + (" (both strands)" if self.rc_average else ""), dynamic_ncols=True)
        try:
            for batch in self._batches(self._items(lengths)):
                toks = [self._tokens(records[it.rec], it) for it in batch]
                h = self._forward(toks)
                for i, it in enumerate(batch):
                    w = it.win
                    a, b = w.keep_start - w.start, w.keep_end - w.start  # owned rows, window coords
                    owned = h[i, a:b].cpu().numpy()  # (b - a, dim)
                    if self.pool == "none":
                        L = lengths[it.rec]
                        if it.strand == 0:
                            row, vals = offsets[it.rec] + w.keep_start, owned
                        else:  # RC positions keep_start..keep_end-1 are forward L-1-p: reversed
                            row, vals = offsets[it.rec] + L - w.keep_end, owned[::-1]
                        sink.positions(int(row), vals * np.float32(scale) if self.rc_average else vals,
                                       add=self.rc_average)
                    else:
                        st = state.setdefault(it.rec, _RecordState(remaining=n_windows[it.rec] * n_strands))
                        keep = ~self.ambiguous[toks[i][a:b]]
                        if self.pool == "max":
                            st.sums[(it.strand, it.index)] = owned.max(0, where=keep[:, None], initial=-np.inf)
                        else:
                            st.sums[(it.strand, it.index)] = owned.sum(0, dtype=np.float64, where=keep[:, None])
                        st.counts[(it.strand, it.index)] = int(keep.sum())
                        st.remaining -= 1
                        if st.remaining == 0:
                            empty += self._finish_pooled(it.rec, state.pop(it.rec), n_windows[it.rec], sink)
                    bar.update(b - a)
        finally:
            bar.close()
        return empty

    def _finish_pooled(self, rec: int, st: _RecordState, n_win: int, sink: _Sink) -> int:
        """Sum each strand over its windows in window order (deterministic), then average (or the
        maximum over windows and strands for ``pool="max"``)."""
        strands = (0, 1) if self.rc_average else (0,)
        if self.pool == "max":
            count = sum(st.counts.values()) // len(strands)
            if count == 0:
                sink.pooled(rec, np.full(self.dim, np.nan, np.float32), 0)
                return 1
            sink.pooled(rec, np.max(np.stack(list(st.sums.values())), axis=0).astype(np.float32), count)
            return 0
        per_strand = [sum((st.sums[(s, k)] for k in range(n_win)), np.zeros(self.dim)) for s in strands]
        total = per_strand[0] + per_strand[1] if self.rc_average else per_strand[0]
        count = sum(st.counts[(s, k)] for s in strands for k in range(n_win))
        per_strand_count = count // len(strands)
        if count == 0:
            sink.pooled(rec, np.full(self.dim, np.nan, np.float32), 0)
            return 1
        sink.pooled(rec, (total / count).astype(np.float32), per_strand_count)
        return 0


# ---------------------------------------------------------------------- in-memory API
def _as_ids(seq: Any, tokenizer: Tokenizer) -> np.ndarray:
    if isinstance(seq, (str, bytes, bytearray)):
        return tokenizer.encode(seq)
    if isinstance(seq, torch.Tensor):
        return seq.detach().cpu().numpy().reshape(-1)
    return np.asarray(seq).reshape(-1)


def embed_sequences(model: ReformerLM, sequences: Sequence[Any], tokenizer: Optional[Tokenizer] = None, *,
                    pool: str = "mean", rc_average: bool = False, window: Optional[int] = None,
                    overlap: Optional[int] = None, batch_size: int = 16, max_batch_tokens: Optional[int] = None,
                    device: str = "auto", precision: str = "fp32", progress: bool = False, layer: Optional[int] = None
                    ) -> Union[np.ndarray, list[np.ndarray]]:
    """Embed sequences (strings or token id arrays) in memory.

    Returns ``pool="mean"``: (N, dim) float32; ``pool="none"``: a list of (L_i, dim) float32
    arrays. For whole genomes use :func:`embed_fasta`, which writes to disk incrementally.
    The model is put in eval mode and moved to ``device``.
    """
    tokenizer = tokenizer or NucleotideTokenizer()
    recs = [_as_ids(s, tokenizer) for s in sequences]
    for i, r in enumerate(recs):
        if r.size == 0:
            raise InputError(f"sequence #{i + 1} is empty; every sequence needs at least one base")
    eng = _Engine(model, tokenizer, pool, rc_average, window, overlap, batch_size, max_batch_tokens, device, precision,
                  layer)
    total = sum(len(r) for r in recs)
    sink = _MemorySink(len(recs), total, eng.dim, pool)
    eng.run(recs, sink, progress)
    if pool != "none":
        return sink.emb
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in recs])])
    return [sink.emb[offsets[i]:offsets[i + 1]] for i in range(len(recs))]


