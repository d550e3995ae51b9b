"""Copy attention: LSH attention on content codes of the last k bases, with shifted values.

Genomes repeat themselves (transposons, paralogs, rRNA operons, inverted repeats). A model that
has seen a segment once can predict its second copy base by base, if a query can find the
earlier copy and read what came *after* it. LSH attention (Kitaev et al., ICLR 2020, section 2)
is the right memory for that: equal content lands in the same bucket in every round, so the
earlier copy is visible however far back it lies, and most of the window is not. What learned
queries built on positional embeddings did not find within minutes of CPU training, three
ingredients together do (measured; see the README's "Does it model DNA?"):

* **content codes without positions.** The query and key of position ``t`` are fixed functions
  of the bases ``x[t-k+1..t]``: the one-hot codes of the ``k`` last bases, centred and concatenated
  (most recent first), unit-normalised. Two positions' logit is ``T * (4m - k) / 3k`` for ``m``
  matching bases, with a learned temperature ``T`` per head (initially ``temperature``): an
  exact k-mer match gets ``T``, a one-mismatch neighbour ``4T / 3k`` less, a random k-mer about 0.
* **shifted values.** A query matching key ``j`` wants the base *after* ``j``: the direct head's
  value at ``j`` is the projection of position ``j + 1``. Keys are strictly earlier than the
  query (``j < t``, so ``j + 1 <= t``): nothing from the future is read.
* **no self fallback.** The shared-QK rule (a query alone in its bucket takes its own value)
  would hand a query its own shifted value, the next base; here a query that sees no key in
  any round gets zero instead.

A second head finds **reverse-complement copies** (inverted repeats): its key at ``j`` is the code
of the reverse complement of ``x[j-k+1..j]``, and its value is the projection of position
``j - k``, the base before that k-mer, whose complement follows the query's k-mer. Both heads
hash the strand-symmetric code ``code(kmer) + code(revcomp(kmer))``, which a k-mer, its direct
copy and its reverse-complement copy share, so one sorted layout serves both.

**Spaced seeds** (``seeds``; PatternHunter, Ma, Tromp and Li, Bioinformatics 2002): instead of
the contiguous k-mer, each pair of heads (direct + reverse complement) codes only the bases a
0/1 pattern over the last ``s`` bases marks (most recent first), so a substitution breaks only
the seeds that cover it, and a copy diverged by 10% is still followed by the heads whose
pattern it spares. Patterns must be palindromic: then the reverse-complement code of a window
covers the same bases as its forward code, and the strand-symmetric hash still joins a k-mer,
its direct copy and its inverted copy. A pattern with zeros at the most recent offsets is a
head that keeps following an alignment through the last bases' mismatches (persistence).
Contiguous ``k`` is the pattern of ``k`` ones; several k at once are several such patterns.

The layer reads token ids (it needs the bases, not hidden states) and has fixed one-hot values:
each head's output is a distribution over the next base (:meth:`CopyAttention.next_base`), which
:class:`CopyMixture` mixes with the network's own by a learned gate. Its only parameters are
the heads' temperatures (learned or fixed); the gate belongs to the mixture.

Letters: B batch, L length, Lp padded length, S seeds (patterns), H heads (per seed 1 direct
+ 1 reverse-complement), k widest pattern span, D = 4k code width, R hash rounds, C bucket size
(look-back), G = B * H.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...genome.tokenizers import A_ID as FIRST_BASE_ID, N_BASES
from .chunked import Layout, chunked_attention
from .lsh import bits_bound, bucket_bits, layer_rotations, lsh_layout, n_hash_factors

# Buckets per round: 2**EXTRA_BITS times the LSH layer's (real_length / bucket_size). Exact
# k-mer matches share a bucket whatever the bucket count, but angular LSH fills buckets unevenly
# (a position's bucket holds ~3x the mean), and a causal query sees only the ``bucket_size``
# nearest earlier keys of its bucket: finer buckets keep the earlier copy among them.
EXTRA_BITS = 3


def base_vectors(tokens: Tensor) -> Tensor:
    """(B, L) token ids -> (B, L, 4) centred one-hot of A/C/G/T (``onehot - 1/4``); zero rows for
    N, padding and specials. Centred, two random k-mers' codes have cosine 0 on average (plain
    one-hot codes all lie in one orthant, cosine 1/4, and angular LSH piles them into few buckets);
    k-mers with ``m`` of ``k`` bases equal have cosine ``(4m - k) / 3k``."""
    idx = tokens.long() - FIRST_BASE_ID
    is_base = (idx >= 0) & (idx < N_BASES)
    # a comparison, not F.one_hot (which reads its input's range back to the host)
    onehot = (idx.unsqueeze(-1) == torch.arange(N_BASES, device=idx.device)).to(torch.float32)  # (B, L, 4)
    return (onehot - 1.0 / N_BASES) * is_base.unsqueeze(-1)


def kmer_codes(vec: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Unnormalised content codes of the k-mer ending at each position, (B, L, 4k) each.

    ``vec`` (B, L, 4): per-base vectors (:func:`base_vectors`; channels A, C, G, T, so reversing
    the channels complements a base). ``fwd[t]`` holds ``vec[t - i]`` in slot ``i`` (most recent
    base first); ``rc[t]`` is the code of the reverse complement of the same k-mer: slot ``i``
    holds ``complement(vec[t - k + 1 + i])``. Bases before the start of the sequence are zero.
    """
    B, L, _ = vec.shape
    padded = F.pad(vec, (0, 0, k - 1, 0))  # (B, L + k - 1, 4)
    win = padded.unfold(1, k, 1)  # (B, L, 4, k): win[..., i] = vec[t - k + 1 + i]
    fwd = win.flip(-1).transpose(-1, -2).reshape(B, L, k * N_BASES)  # slot i: vec[t - i]
    rc = win.flip(-2).transpose(-1, -2).reshape(B, L, k * N_BASES)  # slot i: complement(vec[t-k+1+i])
    return fwd, rc


def alone_mask(lay: Layout, L: int) -> Tensor:
    """(G, L) bool: queries that see no key in any round (first of their bucket in every
    round's sorted order). Causal LSH windows always include the nearest earlier same-bucket
    position, so "no earlier same-bucket neighbour" is exactly "sees nothing"."""
    assert lay.perm is not None  # an LSH layout is always permuted
    b = lay.buckets  # (R, G, L) sorted bucket ids
    first = torch.ones_like(b, dtype=torch.bool)
    first[..., 1:] = b[..., 1:] != b[..., :-1]  # (R, G, L) in sorted order
    alone_orig = torch.empty_like(first)
    alone_orig.scatter_(-1, lay.perm.long(), first)  # back to original positions
    return alone_orig.all(dim=0)[:, :L]  # (G, L)


class CopyAttention(nn.Module):
    """(B, L) tokens -> each copy head's next-base distribution (B, L, H, 4) (causal only)."""

    def __init__(self, k: int = 12, reverse_complement: bool = True, bucket_size: int = 16,
                 n_hashes: int = 4, temperature: float = 16.0, hash_seed: int = 0, learn_temperature: bool = True,
                 eval_hashes: Optional[int] = None, seeds: Optional[Sequence[str]] = None, persist: bool = False):
        super().__init__()
        self.persist = persist
        self.seeds = tuple(seeds) if seeds else ("1" * k,)
        self.spans = [len(p) for p in self.seeds]
        self.k = max(self.spans)  # the widest span sets the code width
        self.rc, self.bucket_size, self.train_hashes = reverse_complement, bucket_size, n_hashes
        self.eval_hashes = eval_hashes or n_hashes
        self.per_seed = 2 if reverse_complement else 1
        self.heads = self.per_seed * len(self.seeds)
        self.dim_head = N_BASES * self.k
        masks = torch.zeros(len(self.seeds), self.k)
        for g, pat in enumerate(self.seeds):
            masks[g, :len(pat)] = torch.tensor([float(c == "1") for c in pat])
        self.register_buffer("seed_masks", masks, persistent=False)  # (S, k): 1 where a seed reads the base
        self.hash_seed = hash_seed
        log_t = torch.full((self.heads,), math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def n_hashes(self) -> int:
        """Hash rounds now: ``eval_hashes`` in eval mode, the training count otherwise."""
        return self.train_hashes if self.training else self.eval_hashes

    def _rotations(self, n_factors: int, device: torch.device) -> Tensor:
        return layer_rotations(self.heads, self.dim_head, self.n_hashes, n_factors, device, self.training,
                               self.hash_seed)

    def seed_codes(self, vec: Tensor) -> tuple[Tensor, Tensor]:
        """vec (B, Lp, 4) -> each seed's unit-normalised forward and reverse-complement codes,
        zero-padded to width D: (B, S, Lp, D) each (slots a pattern skips are zero)."""
        fw, rv = [], []
        masks: Tensor = self.seed_masks  # type: ignore[assignment]  # a registered buffer
        for g, s in enumerate(self.spans):
            f, r = kmer_codes(vec, s)  # (B, Lp, 4s) each
            m = masks[g, :s].to(vec.dtype).unsqueeze(-1).expand(s, N_BASES).reshape(-1)  # (4s,); no host sync
            pad = (0, self.dim_head - N_BASES * s)
            fw.append(F.pad(F.normalize(f * m, dim=-1), pad))
            rv.append(F.pad(F.normalize(r * m, dim=-1), pad))
        return torch.stack(fw, 1), torch.stack(rv, 1)  # (B, S, Lp, D)

    def layout(self, fwd: Tensor, rc: Tensor, real: Tensor, real_len: Tensor) -> Layout:
        """Hash the strand-symmetric code of every position (each head its seed's code, own
        rotations) and sort. fwd, rc: (B, S, Lp, D) per seed, or (B, Lp, D) for a single seed."""
        if fwd.dim() == 3:
            fwd, rc = fwd.unsqueeze(1), rc.unsqueeze(1)  # (B, 1, Lp, D)
        B, S, Lp, D = fwd.shape
        per = self.heads // S
        sym = (fwd + rc).unsqueeze(2).expand(B, S, per, Lp, D).reshape(B, self.heads, Lp, D)  # (B, H, Lp, D)
        bits = bucket_bits(real_len, self.bucket_size, None) + EXTRA_BITS
        rot = self._rotations(n_hash_factors(bits, bits_bound(Lp, self.bucket_size, None) + EXTRA_BITS), fwd.device)
        return lsh_layout(sym, real, bits, rot, self.n_hashes, self.bucket_size, causal=True)

    def attend(self, values: Tensor, tokens: Tensor, real: Optional[Tensor] = None,
               vec: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Copy attention with per-position ``values`` (B, L, H, D): key j of a direct head reads
        ``values[j + 1, h]``, of a reverse-complement head ``values[j - s, h]`` (s: its seed's
        span). Heads come in seed order, direct then reverse complement. ``vec``: the tokens'
        :func:`base_vectors`, when the caller has them already. Returns the output (B, L, H, D),
        zero where a query sees nothing, and ``seen`` (B, L, H) bool."""
        B, L = tokens.shape
        C, P = self.bucket_size, self.per_seed
        Lp = math.ceil(L / C) * C
        real = torch.ones(B, L, dtype=torch.bool, device=tokens.device) if real is None else real
        real_p = F.pad(real, (0, Lp - L), value=False)  # (B, Lp)
        vec = base_vectors(tokens) if vec is None else vec
        vec = F.pad(vec * real.unsqueeze(-1), (0, 0, 0, Lp - L))  # (B, Lp, 4)
        fwd, rc = self.seed_codes(vec)  # (B, S, Lp, D) each
        with torch.no_grad():
            lay = self.layout(fwd, rc, real_p, real_p.sum(1))
        temp = self.log_temperature.exp()  # (H,)
        S, D = fwd.shape[1], fwd.shape[-1]
        q = fwd.transpose(1, 2).unsqueeze(3).expand(B, Lp, S, P, D).reshape(B, Lp, self.heads, D)  # (B, Lp, H, D)
        q = q * temp.view(1, 1, -1, 1)  # scale 1, logit = T * cos
        pairs = [c for g in range(len(self.seeds)) for c in (fwd[:, g], rc[:, g])[:P]]
        keys = torch.stack(pairs, dim=2)  # (B, Lp, H, D)
        v = F.pad(values, (0, 0, 0, 0, 0, Lp - L))  # (B, Lp, H, D)
        shifted = []
        for g, s in enumerate(self.spans):
            shifted.append(F.pad(v[:, 1:, g * P], (0, 0, 0, 1)))  # direct: key j reads position j + 1
            if self.rc:
                shifted.append(F.pad(v[:, :Lp - s, g * P + 1], (0, 0, s, 0)))  # reverse complement: j - s
        vs = torch.stack(shifted, dim=2)  # (B, Lp, H, D)
        out = chunked_attention(q.contiguous(), keys.contiguous(), vs.contiguous(), lay, scale=1.0)  # (B, Lp, H, D)
        seen = ~alone_mask(lay, L).view(B, self.heads, L).transpose(1, 2)  # (B, L, H)
        return out[:, :L] * seen.unsqueeze(-1).to(out.dtype), seen  # no self fallback: alone -> 0

    def next_base(self, tokens: Tensor, real: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Each head's distribution over the next base (B, L, H, 4), from fixed one-hot values: the
        direct head reads the base after its earlier copy, the reverse-complement head the complement
        of the base before it. Mass that lands on N is spread evenly; a query that sees nothing gets
        the uniform distribution. Also ``seen``."""
        B, L = tokens.shape
        vec = base_vectors(tokens)  # centred one-hot; zero rows for N
        onehot = vec + (vec.abs().sum(-1, keepdim=True) > 0) / N_BASES  # (B, L, 4)
        vals = [onehot, onehot.flip(-1)][:self.per_seed] * len(self.seeds)  # complement: A C G T reversed
        v = torch.stack(vals, dim=2)  # (B, L, H, 4)
        if self.persist:  # each value also carries its own position, as clock phases
            pos = clock(torch.arange(L, device=tokens.device))[None, :, None]  # (1, L, 1, 2n)
            v = torch.cat([v, pos.expand(B, L, self.heads, -1)], dim=-1)  # (B, L, H, 4 + 2n)
        v = F.pad(v, (0, self.dim_head - v.shape[-1]))  # (B, L, H, D)
        out, seen = self.attend(v, tokens, real, vec)
        p = out[..., :N_BASES]  # (B, L, H, 4)
        p = p + (1.0 - p.sum(-1, keepdim=True)).clamp(min=0) / N_BASES
        if self.persist:
            with torch.no_grad():
                pp, ps = self.persistence(out[..., N_BASES:N_BASES + 2 * len(CLOCK_PERIODS)], seen, tokens, real)
            p, seen = torch.cat([p, pp], dim=2), torch.cat([seen, ps], dim=2)
        return p, seen

    def persistence(self, clocks: Tensor, seen: Tensor, tokens: Tensor, real: Optional[Tensor]
                    ) -> tuple[Tensor, Tensor]:
        """One more head per strand that keeps following the last alignment a seed head found,
        through any mismatches since (GeCo's substitution-tolerant copy model, made parallel):
        ``clocks`` (B, L, H, 2n), the attention output's clock channels, give each head's source
        position; an **anchor** is a position where a head's source is one base on from its
        source at t - 1 (the attention sat on one key at both, so not a chance match); from the
        latest anchor ``a`` the source moves one base a step, ``src(a) + (t - a)`` (reverse
        complement: ``- (t - a)``). Returns the next-base distributions (B, L, P, 4), one-hot on
        the pointed base (its complement for reverse complement; uniform without a pointer),
        and whether there is a pointer (B, L, P)."""
        B, L, H, _ = clocks.shape
        P, S = self.per_seed, H // self.per_seed  # strands, seeds: head s * P + r is seed s, strand r
        src, sharp = decode_clock(clocks)  # (B, L, H) each
        dev = tokens.device
        sign = torch.tensor([1, -1][:P], device=dev)  # (P,): the source moves +1 (direct) or -1 (rc) a step
        prev = F.pad(src, (0, 0, 1, 0), value=-10)  # (B, L + 1, H): source at t - 1
        ok_prev = F.pad(seen & sharp, (0, 0, 1, 0), value=False)
        anchor = seen & sharp & ok_prev[:, :-1] & (src == prev[:, :-1] + sign.repeat(S))  # (B, L, H)
        anchor, src = anchor.view(B, L, S, P), src.view(B, L, S, P)  # (B, L, S, P)
        first = anchor.float().argmax(2, keepdim=True)  # (B, L, 1, P): the first anchoring seed
        src_a = src.gather(2, first).squeeze(2)  # (B, L, P)
        t = torch.arange(L, device=dev).view(1, L, 1)  # (1, L, 1)
        last = torch.where(anchor.any(2), t, torch.full_like(t, -1)).cummax(1).values  # (B, L, P) latest anchor
        ptr = src_a.gather(1, last.clamp(min=0)) + sign * (t - last)  # (B, L, P)
        ids = tokens.long() - FIRST_BASE_ID  # (B, L)
        is_base = (ids >= 0) & (ids < N_BASES)
        if real is not None:
            is_base = is_base & real
        ok = (last >= 0) & (ptr >= 0) & (ptr <= t)
        ptr = ptr.clamp(0, L - 1)
        ok = ok & is_base.unsqueeze(-1).expand(B, L, P).gather(1, ptr)
        base = ids.clamp(0, N_BASES - 1).unsqueeze(-1).expand(B, L, P).gather(1, ptr)  # (B, L, P)
        base = torch.where(sign > 0, base, N_BASES - 1 - base)  # the complement on the reverse strand
        pr = (base.unsqueeze(-1) == torch.arange(N_BASES, device=dev)).to(clocks.dtype)  # (B, L, P, 4)
        return pr.masked_fill(~ok.unsqueeze(-1), 0.0) + (~ok).unsqueeze(-1).to(clocks.dtype) / N_BASES, ok

    @property
    def out_heads(self) -> int:
        """Next-base distributions :meth:`next_base` returns: the heads, plus one per strand with ``persist``."""
        return self.heads + (self.per_seed if self.persist else 0)


# Clock periods of the position code in the values: the finest resolves single bases, each coarser
# one the finer one's turn, up to 16.7M positions (attention leaking 1% of its mass elsewhere moves
# a phase by ~0.01 rad: ~0.1 base at period 64, 2,600 bases at 16.7M; each < half the next period)
CLOCK_PERIODS = (64, 4096, 262144, 16777216)


def clock(pos: Tensor) -> Tensor:
    """(L,) positions -> (L, 2n) cos/sin phases at :data:`CLOCK_PERIODS` (float64 phases, float32 out)."""
    ang = pos.double().unsqueeze(-1) * (2 * math.pi / torch.tensor(CLOCK_PERIODS, dtype=torch.float64,
                                                                    device=pos.device))  # (L, n)
    return torch.cat([ang.cos(), ang.sin()], dim=-1).float()


def decode_clock(c: Tensor, sharp_at: float = 0.95) -> tuple[Tensor, Tensor]:
    """(..., 2n) attention-averaged clock phases -> the position (..., int64), coarse to fine, and
    whether every phase vector kept length >= ``sharp_at`` (the attention sat on one position)."""
    n = len(CLOCK_PERIODS)
    cos, sin = c[..., :n].double(), c[..., n:].double()
    sharp = (cos ** 2 + sin ** 2 >= sharp_at ** 2).all(-1)
    per = torch.tensor(CLOCK_PERIODS, dtype=torch.float64, device=c.device)
    frac = torch.atan2(sin, cos).remainder(2 * math.pi) / (2 * math.pi) * per  # (..., n) position mod period
    est = frac[..., -1]
    for i in range(n - 2, -1, -1):
        est = frac[..., i] + per[i] * torch.round((est - frac[..., i]) / per[i])
    return torch.round(est).long(), sharp


HIT_WINDOWS = (4, 16, 64)  # the copy mixture's gate sees each head's recent hit rate over these spans


def recent_hits(p_copy: Tensor, tokens: Tensor, windows: tuple[int, ...] = HIT_WINDOWS) -> Tensor:
    """How well each copy head predicted the bases just before each position: (B, L, H * len(windows)).

    ``hit[t]`` is the probability head h gave at ``t - 1`` to the base ``tokens[t]`` (0.25 where
    that is not a base, and at t = 0); the feature is its mean over the last ``w`` positions
    ``t - w + 1 .. t``. All of it is known at t: the classic copy model's "match length" signal.
    """
    B, L, H, _ = p_copy.shape
    idx = (tokens.long() - FIRST_BASE_ID)  # (B, L)
    is_base = ((idx >= 0) & (idx < N_BASES)).unsqueeze(-1)  # (B, L, 1)
    prev = F.pad(p_copy[:, :-1], (0, 0, 0, 0, 1, 0), value=1.0 / N_BASES)  # (B, L, H, 4): p at t - 1
    got = prev.gather(-1, idx.clamp(0, N_BASES - 1).view(B, L, 1, 1).expand(B, L, H, 1)).squeeze(-1)
    hit = got.masked_fill(~is_base, 1.0 / N_BASES)  # (B, L, H)
    cs = F.pad(hit.cumsum(1), (0, 0, 1, 0))  # (B, L + 1, H)
    lo, n = _window_starts(L, windows, hit.device)  # (W, L) each
    means = (cs[:, 1:].unsqueeze(1) - cs[:, lo]) / n.to(hit.dtype).view(1, len(windows), L, 1)  # (B, W, L, H)
    return means.permute(0, 2, 1, 3).reshape(B, L, len(windows) * H)  # window-major, as concatenated


def _window_starts(L: int, windows: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """For each window w and position t: the first position ``max(0, t - w + 1)`` of the span
    ending at t, and the span's length, (W, L) long each (computed together: a few ops, not a few per window)."""
    end = torch.arange(1, L + 1, device=device)  # (L,): t + 1
    w = torch.tensor(windows, device=device).view(-1, 1)  # (W, 1)
    lo = (end - w).clamp(min=0)  # (W, L)
    return lo, end - lo


class CopyMixture(nn.Module):
    """Pointer-generator style mixture (See et al., ACL 2017) of the network's next-base
    distribution with the copy heads': ``p = w_0 p_model + w_1 p_direct + w_2 p_revcomp``, the
    weights a softmax of a small gate network on the hidden state, on each copy distribution and
    how peaked it is, and on how well each head predicted the last 4, 16 and 64 bases
    (:func:`recent_hits`). Takes the network's log-probabilities and returns the mixture's."""

    def __init__(self, dim: int, heads: int, hidden: int = 32):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        n_in = dim + heads * (N_BASES + 2 + len(HIT_WINDOWS))
        last = nn.Linear(hidden, heads + 1)
        self.gate = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), last)
        nn.init.zeros_(last.weight)
        with torch.no_grad():  # start trusting the network: copy weights e^-3 each
            last.bias.copy_(torch.tensor([3.0] + [0.0] * heads))

    def features(self, h: Tensor, p_copy: Tensor, seen: Tensor, tokens: Tensor) -> Tensor:
        peak = p_copy.max(-1).values  # (B, L, H)
        return torch.cat([self.norm(h), p_copy.flatten(2), peak, seen.to(h.dtype),
                          recent_hits(p_copy, tokens).to(h.dtype)], dim=-1)

    def forward(self, logp: Tensor, h: Tensor, p_copy: Tensor, seen: Tensor, tokens: Tensor) -> Tensor:
        """logp (B, L, V) the network's log-probabilities, h (B, L, dim), p_copy (B, L, H, 4),
        seen (B, L, H), tokens (B, L) -> the mixture's log-probabilities (B, L, V)."""
        w = torch.softmax(self.gate(self.features(h, p_copy, seen, tokens)), dim=-1)  # (B, L, 1 + H)
        p = torch.softmax(logp.float(), dim=-1) * w[..., :1]  # (B, L, V); softmax(log p) = p
        copy_p = (p_copy * w[..., 1:].unsqueeze(-1)).sum(2)  # (B, L, 4)
        p = torch.cat([p[..., :FIRST_BASE_ID], p[..., FIRST_BASE_ID:FIRST_BASE_ID + N_BASES] + copy_p,
                       p[..., FIRST_BASE_ID + N_BASES:]], dim=-1)
        return torch.log(p.clamp(min=1e-30)).to(logp.dtype)
