"""Copy attention (content codes, shifted values, no self fallback); planted repeats are in
tests/genome/test_planted_repeats.py.

Oracle tests: with values wired to the one-hot of the base, a planted direct copy is read back
base by base, and a reverse-complement copy gives the complement; equivalence tests: the
compiled kernel and the float64 reference agree, the "alone" mask equals the reference's
empty rows, and the whole model stays strictly causal with the shifted values.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import CONFIGS
from reformer_seq.model.attention import kernel as kernels
from reformer_seq.model.attention.chunked import chunked_attention_forward
from reformer_seq.config import ReformerConfig
from reformer_seq.model.attention.copy_attention import CopyAttention, alone_mask, base_vectors, kmer_codes
from reformer_seq.model.lm import ReformerLM
from reformer_seq.tasks.recall import reverse_complement


def random_ids(n, seed):
    return np.random.default_rng(seed).integers(4, 8, n).astype(np.int64)


def copy_sequence(reverse: bool, seed: int = 0):
    """1000 random bases, S (300), 3000 filler, then S or revcomp(S); returns ids and S' start."""
    ids = random_ids(4600, seed)
    s = ids[1000:1300]
    last = reverse_complement(s) if reverse else s
    seq = np.concatenate([ids[:1000], s, ids[1300:4300], last])
    return torch.from_numpy(seq)[None], 4300


def test_kmer_codes_of_a_reverse_complement_pair():
    ids = torch.from_numpy(random_ids(200, 1))
    k, p = 8, 50
    kmer = ids[p - k + 1:p + 1].numpy()
    ids[150 - k + 1:151] = torch.from_numpy(reverse_complement(kmer))  # its reverse complement ends at 150
    ids[120 - k + 1:121] = torch.from_numpy(kmer)  # a direct copy ends at 120
    fwd, rc = kmer_codes(base_vectors(ids[None]), k)
    assert torch.equal(fwd[0, 120], fwd[0, p])  # direct copy: same forward code
    assert torch.equal(rc[0, p], fwd[0, 150])  # inverted copy: the key's rc code is the query's code
    sym = fwd + rc
    assert torch.allclose(sym[0, 150], sym[0, p]) and torch.allclose(sym[0, 120], sym[0, p])
    assert abs(F.cosine_similarity(fwd[0, 10], fwd[0, 90], dim=0)) < 0.5  # unrelated k-mers


def test_kernel_and_reference_agree_with_gradients():
    if kernels.library() is None:
        pytest.skip("compiled kernel unavailable")
    ids, _ = copy_sequence(False, seed=3)
    ids = ids[:, :2000]
    torch.manual_seed(0)
    m32 = CopyAttention(k=8, learn_temperature=True).eval()
    m64 = CopyAttention(k=8, learn_temperature=True).eval()
    m64.load_state_dict(m32.state_dict())
    m64.double()
    values = torch.randn(1, ids.shape[1], m32.heads, m32.dim_head)  # (B, L, H, D)
    outs = []
    for m, v in ((m32, values), (m64, values.double())):
        m.zero_grad()
        v = v.clone().requires_grad_(True)
        y, _ = m.attend(v, ids)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y).to(y.dtype)).sum().backward()
        outs.append((y.detach().double(), v.grad.double(), m.log_temperature.grad.double()))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)


def test_alone_mask_equals_empty_rows_of_the_reference():
    ids = torch.from_numpy(random_ids(800, 5))[None]
    m = CopyAttention(k=6, n_hashes=2).eval()
    vec = base_vectors(ids)
    fwd, rc = (F.normalize(c, dim=-1).double() for c in kmer_codes(vec, 6))
    real = torch.ones(1, 800, dtype=torch.bool)
    lay = m.layout(fwd, rc, real, real.sum(1))
    G = 2
    q = torch.stack([fwd[0], fwd[0]])  # (G, L, D)
    k = torch.stack([fwd[0], rc[0]])
    _, lse = chunked_attention_forward(q, k, torch.randn_like(q), lay, 1.0)
    alone = alone_mask(lay, 800)
    assert alone.shape == (G, 800)
    assert torch.equal(alone, torch.isinf(lse))
    assert 0 < int(alone.sum()) < 800


def test_model_with_copy_layer_is_strictly_causal():
    cfg = ReformerConfig(vocab_size=9, dim=16, depth=2, heads=2, bucket_size=8, n_hashes=2, max_seq_len=1024,
                         attn_layers=["local", "lsh"], local_window=16, conv_kernel=4, copy_k=6)
    torch.manual_seed(0)
    model = ReformerLM(cfg).eval()
    torch.nn.init.normal_(model.copy_mix.gate[2].weight, std=0.5)  # make the copy path matter
    torch.nn.init.zeros_(model.copy_mix.gate[2].bias)
    assert_strictly_causal(model, lambda alt, t: alt[0, t + 1:].copy_(torch.from_numpy(random_ids(511 - t, t))))


def assert_strictly_causal(model, change) -> None:
    """A 512-base input holding a copy (300-400 repeats 50-150); for t in 120, 333, 450 ``change(alt,
    t)`` edits a clone from t + 1 on: no output at or before t moves, and some output after t does."""
    ids = torch.from_numpy(random_ids(512, 2))[None]
    ids[0, 300:400] = ids[0, 50:150]
    with torch.no_grad():
        base = model(ids)
        for t in (120, 333, 450):
            alt = ids.clone()
            change(alt, t)
            out = model(alt)
            assert torch.allclose(out[0, :t + 1], base[0, :t + 1], atol=1e-5), t
            assert not torch.allclose(out[0, t + 1:], base[0, t + 1:], atol=1e-3)


@pytest.mark.parametrize("reverse", [False, True])
def test_next_base_distributions_read_the_copy(reverse):
    ids, start = copy_sequence(reverse, seed=4)
    m = CopyAttention(k=10, temperature=30.0).eval()
    with torch.no_grad():
        p, seen = m.next_base(ids)
    assert torch.allclose(p.sum(-1), torch.ones(p.shape[:-1]))
    t = torch.arange(start + 12, ids.shape[1] - 1)
    head = 1 if reverse else 0  # the reverse-complement head does the complementing itself
    pred = p[0, t, head].argmax(-1) + 4
    assert (pred == ids[0, t + 1]).float().mean() > 0.97
    assert p[0, t, head].max(-1).values.mean() > 0.9
    assert not seen[0, 0].any()  # the first position sees nothing: uniform
    assert torch.allclose(p[0, 0], torch.full((2, 4), 0.25))


def test_copy_mixture_is_the_weighted_sum():
    from reformer_seq.model.attention.copy_attention import CopyMixture

    torch.manual_seed(0)
    mix = CopyMixture(dim=8, heads=2)
    torch.nn.init.normal_(mix.gate[2].weight)
    logp_net, h = torch.log_softmax(torch.randn(1, 5, 9), -1), torch.randn(1, 5, 8)
    p_copy = torch.softmax(torch.randn(1, 5, 2, 4), -1)
    seen = torch.tensor([[[True, False]] * 5])
    tokens = torch.tensor([[4, 5, 8, 7, 6]])
    logp = mix(logp_net, h, p_copy, seen, tokens)
    w = torch.softmax(mix.gate(mix.features(h, p_copy, seen, tokens)), -1)
    want = logp_net.exp() * w[..., :1]
    want[..., 4:8] += (p_copy * w[..., 1:, None]).sum(2)
    assert torch.allclose(logp.exp(), want, atol=1e-6)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(1, 5))
    assert torch.allclose(torch.log_softmax(logp, -1), logp, atol=1e-6)  # normalised


def test_recent_hits_by_hand():
    from reformer_seq.model.attention.copy_attention import recent_hits

    p = torch.full((1, 4, 1, 4), 0.25)
    p[0, 0, 0] = torch.tensor([0.7, 0.1, 0.1, 0.1])  # at t=0 the head says A (id 4)
    p[0, 1, 0] = torch.tensor([0.1, 0.1, 0.1, 0.7])  # at t=1 it says T, but C comes
    tokens = torch.tensor([[6, 4, 5, 8]])  # G A C N
    hits = recent_hits(p, tokens, windows=(1, 2))  # (1, 4, 2): last 1 and last 2 positions
    want_hit = torch.tensor([0.25, 0.7, 0.1, 0.25])  # t=0: nothing before; t=3: N is not a base
    assert torch.allclose(hits[0, :, 0], want_hit)
    assert torch.allclose(hits[0, :, 1], torch.tensor([0.25, (0.25 + 0.7) / 2, (0.7 + 0.1) / 2, (0.1 + 0.25) / 2]))


def test_every_parameter_of_the_default_config_gets_a_gradient():
    """No dead weights: one training step of configs/default.yaml's model (shortened) moves every
    parameter (the removed copy placements' values never did, under the mixture)."""
    from reformer_seq.config import load_run_config

    cfg = load_run_config(CONFIGS / "default.yaml").model
    cfg.max_seq_len, cfg.copy_learn_temperature = 1024, True
    torch.manual_seed(0)
    model = ReformerLM(cfg).train()
    for p in model.parameters():  # zero-initialised output layers would hide the gradient of what feeds them
        torch.nn.init.normal_(p, std=0.1)
    ids = torch.from_numpy(random_ids(512, 4))[None]
    ids[0, 300:450] = ids[0, 20:170]
    logp = model(ids)
    F.nll_loss(logp[0, :-1], ids[0, 1:]).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0.0]
    assert not dead, dead


def test_checkpoints_of_the_removed_placements():
    """An old "mix" checkpoint (with the unused copy values) loads and computes the same; "top" and
    "bottom" are refused in one line that says why."""
    from reformer_seq.config import ReformerConfig as RC
    from reformer_seq.errors import ConfigError

    cfg = dict(vocab_size=9, dim=16, depth=1, heads=2, bucket_size=8, n_hashes=2, max_seq_len=512, copy_k=6)
    model = ReformerLM(ReformerConfig(**cfg)).eval()
    old = dict(model.state_dict())
    old.update({"copy.norm.weight": torch.ones(16), "copy.norm.bias": torch.zeros(16),
                "copy.to_v.weight": torch.zeros(48, 16), "copy.to_out.weight": torch.zeros(16, 48),
                "copy.to_out.bias": torch.zeros(16)})
    again = ReformerLM(RC.from_dict({**cfg, "copy_position": "mix"})).eval()
    assert again.load_state_dict(old, strict=True)  # the legacy keys are dropped, nothing else is missing
    ids = torch.from_numpy(random_ids(256, 9))[None]
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))
    for where in ("top", "bottom"):
        with pytest.raises(ConfigError, match="was removed.*retrain"):
            RC.from_dict({**cfg, "copy_position": where})


def test_more_hash_rounds_in_evaluation():
    m = CopyAttention(k=6, n_hashes=2, eval_hashes=4)
    ids = torch.from_numpy(random_ids(256, 6))[None]
    vec = base_vectors(ids)
    fwd, rc = (F.normalize(c, dim=-1) for c in kmer_codes(vec, 6))
    real = torch.ones(1, 256, dtype=torch.bool)
    assert m.train().layout(fwd, rc, real, real.sum(1)).rounds == 2
    assert m.eval().layout(fwd, rc, real, real.sum(1)).rounds == 4


# ---------------------------------------------------------------------- spaced seeds
SEEDS = ("11101010000001010111", "01000011111111000010", "10110100011000101101", "00011101100110111000")


def diverged_copy_sequence(rate: float, seed: int = 0, reverse: bool = False):
    """1000 random bases, S (400), 3000 filler, then S (or revcomp S) with ``rate`` of its bases substituted."""
    from reformer_seq.tasks.recall import diverge

    ids = random_ids(4800, seed)
    s = ids[1000:1400]
    last, _ = diverge(reverse_complement(s) if reverse else s, np.random.default_rng(seed), rate)
    return torch.from_numpy(np.concatenate([ids[:1000], s, ids[1400:4400], last]))[None], 4400


def copy_accuracy(m: CopyAttention, ids: torch.Tensor, start: int) -> tuple[float, float]:
    """Share of S' positions (past its first 24 bases) where the best head that sees the copy predicts
    the next base, and the share where some head's top base is right (a perfect gate's ceiling)."""
    with torch.no_grad():
        p, seen = m.next_base(ids)
    t = torch.arange(start + 24, ids.shape[1] - 1)
    nxt = ids[0, t + 1] - 4
    top = p[0, t].argmax(-1)  # (T, H)
    right = (top == nxt[:, None]) & (p[0, t].max(-1).values > 0.5)  # a confident, right head
    return float(right.any(-1).float().mean()), float(right.float().mean(0).max())


@pytest.mark.parametrize("reverse", [False, True])
def test_spaced_seeds_follow_a_diverged_copy_the_contiguous_kmer_loses(reverse):
    ids, start = diverged_copy_sequence(0.10, seed=7, reverse=reverse)
    contiguous = CopyAttention(k=12, temperature=11.0, n_hashes=4).eval()
    spaced = CopyAttention(k=12, temperature=11.0, n_hashes=4, seeds=SEEDS).eval()
    assert spaced.heads == 8
    any_c, _ = copy_accuracy(contiguous, ids, start)
    any_s, _ = copy_accuracy(spaced, ids, start)
    # 10% substituted: 0.9 ** 12 = 28% of 12-mers survive; the seeds spare most substitutions
    assert any_s > 0.6 and any_s > any_c + 0.15, (any_s, any_c)
    # the heads of the wrong strand see only unrelated keys: their top base is right by chance
    with torch.no_grad():
        p, _ = spaced.next_base(ids)
    t = torch.arange(start + 24, ids.shape[1] - 1)
    wrong = p[0, t, (0 if reverse else 1)::2].argmax(-1) == (ids[0, t + 1] - 4)[:, None]  # (T, 4)
    right = p[0, t, (1 if reverse else 0)::2].argmax(-1) == (ids[0, t + 1] - 4)[:, None]
    assert float(wrong.float().mean()) < 0.4 < float(right.float().mean())


def test_contiguous_seed_equals_the_plain_kmer_layer():
    ids, _ = copy_sequence(False, seed=5)
    a = CopyAttention(k=10, temperature=20.0).eval()
    b = CopyAttention(k=10, temperature=20.0, seeds=("1" * 10,)).eval()
    with torch.no_grad():
        pa, sa = a.next_base(ids)
        pb, sb = b.next_base(ids)
    assert torch.equal(pa, pb) and torch.equal(sa, sb)


def test_clock_positions_round_trip():
    from reformer_seq.model.attention.copy_attention import clock, decode_clock

    pos = torch.tensor([0, 1, 63, 64, 4095, 4096, 70_001, 262_143, 1_048_575, 5_000_000])
    got, sharp = decode_clock(clock(pos))
    assert torch.equal(got, pos) and sharp.all()
    mixed = 0.5 * clock(torch.tensor([100])) + 0.5 * clock(torch.tensor([90_000]))  # attention split in two
    assert not decode_clock(mixed)[1].any()


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("rate", [0.1, 0.2])
def test_persistence_head_follows_a_diverged_copy(rate, reverse):
    """The persistence heads (last per strand) are right wherever the copy was not substituted."""
    ids, start = diverged_copy_sequence(rate, seed=7, reverse=reverse)
    m = CopyAttention(k=12, temperature=11.0, n_hashes=4, seeds=SEEDS, persist=True).eval()
    assert m.out_heads == 10
    with torch.no_grad():
        p, seen = m.next_base(ids)
    assert p.shape[2] == seen.shape[2] == 10
    t = torch.arange(start + 24, ids.shape[1] - 1)
    right = (p[0, t].argmax(-1) == (ids[0, t + 1] - 4)[:, None]) & seen[0, t]  # (T, 10)
    strand = 9 if reverse else 8
    assert float(right[:, strand].float().mean()) > 1.0 - rate - 0.06  # at most the substituted bases missed
    assert float(right[:, 17 - strand].float().mean()) < 0.4  # the other strand's pointer is chance
    assert float(right[:, strand].float().mean()) > float(right[:, :8].float().mean(0).max()) + 0.2  # beats every seed


def test_model_with_spaced_seeds_is_strictly_causal():
    cfg = ReformerConfig(vocab_size=9, dim=16, depth=2, heads=2, bucket_size=8, n_hashes=2, max_seq_len=1024,
                         attn_layers=["local", "lsh"], local_window=16, conv_kernel=4, copy_k=6,
                         copy_seeds=["1101001011", "11111111"], copy_persist=True)
    torch.manual_seed(0)
    model = ReformerLM(cfg).eval()
    assert model.copy.heads == 4 and model.copy.out_heads == 6
    torch.nn.init.normal_(model.copy_mix.gate[2].weight, std=0.5)
    torch.nn.init.zeros_(model.copy_mix.gate[2].bias)
    # change only the base at t + 1 (inside the copy too)
    assert_strictly_causal(model, lambda alt, t: alt[0, t + 1].copy_(4 + (alt[0, t + 1] - 3) % 4))


@pytest.mark.parametrize("bad", [["1101"], ["110100"], ["11a11"], "1111", [1111011]])
def test_copy_seeds_validation_names_the_fix(bad):
    from reformer_seq.errors import ConfigError

    with pytest.raises(ConfigError, match="copy_seeds"):
        ReformerConfig(vocab_size=9, copy_k=6, copy_seeds=bad)
