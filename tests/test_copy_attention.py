"""Copy attention (content codes, shifted values, no self fallback) and planted repeats.

Oracle tests: with values wired to the one-hot of the base, a planted direct copy is read back
base by base, and a reverse-complement copy gives the complement; equivalence tests: the
compiled kernel and the float64 reference agree, the "alone" mask equals the reference's
empty rows, and the whole model stays strictly causal with the shifted values.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reformer_seq.model.attention import kernel as kernels
from reformer_seq.model.attention.chunked import chunked_attention_forward
from reformer_seq.config import ReformerConfig
from reformer_seq.model.attention.copy_attention import CopyAttention, alone_mask, base_vectors, kmer_codes
from reformer_seq.model.lm import ReformerLM
from reformer_seq.genome.planted_repeats import RepeatPlanting, plant_repeats
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
    ids = torch.from_numpy(random_ids(512, 2))[None]
    ids[0, 300:400] = ids[0, 50:150]
    with torch.no_grad():
        base = model(ids)
        for t in (120, 333, 450):
            alt = ids.clone()
            alt[0, t + 1:] = torch.from_numpy(random_ids(511 - t, t))
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

    cfg = load_run_config(Path(__file__).resolve().parents[1] / "configs" / "default.yaml").model
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


def test_plant_repeats_copies_and_reverse_complements():
    ids = random_ids(4096, 8)
    plan = RepeatPlanting(rate=1.0, copies=6, min_len=32, max_len=512, rc_fraction=0.5, max_mutation=0.0)
    seen_rc = set()
    for seed in range(6):
        out, done = plant_repeats(ids, np.random.default_rng(seed), plan, reverse_complement)
        assert len(done) == 6
        for src, dst, n, is_rc in done[-1:]:  # the last copy is intact (later copies may overwrite earlier)
            assert src + n <= dst  # the source lies wholly before the copy
            seg = out[src:src + n]
            want = reverse_complement(seg) if is_rc else seg
            assert np.array_equal(out[dst:dst + n], want)
            seen_rc.add(is_rc)
        assert 32 <= min(d[2] for d in done) and max(d[2] for d in done) <= 512
    assert seen_rc == {True, False}
    out, done = plant_repeats(ids, np.random.default_rng(0), RepeatPlanting(rate=0.0), reverse_complement)
    assert done == [] and np.array_equal(out, ids)


def test_dataset_plants_training_windows_only(ecoli_records):
    from reformer_seq.config import DataConfig
    from reformer_seq.genome.windows import build_datasets

    cfg = DataConfig(seq_len=2048, plant_repeats=1.0, rc_augment=False)
    train, val = build_datasets(ecoli_records, cfg)
    plain_train, plain_val = build_datasets(ecoli_records, DataConfig(seq_len=2048, rc_augment=False))
    changed = [not torch.equal(train[i]["input_ids"], plain_train[i]["input_ids"]) for i in range(5)]
    assert all(changed)
    assert all(torch.equal(val[i]["input_ids"], plain_val[i]["input_ids"]) for i in range(5))
    assert torch.equal(train[3]["input_ids"], train[3]["input_ids"])  # deterministic


def test_more_hash_rounds_in_evaluation():
    m = CopyAttention(k=6, n_hashes=2, eval_hashes=4)
    ids = torch.from_numpy(random_ids(256, 6))[None]
    vec = base_vectors(ids)
    fwd, rc = (F.normalize(c, dim=-1) for c in kmer_codes(vec, 6))
    real = torch.ones(1, 256, dtype=torch.bool)
    assert m.train().layout(fwd, rc, real, real.sum(1)).rounds == 2
    assert m.eval().layout(fwd, rc, real, real.sum(1)).rounds == 4
