"""Reading-frame features (reformer_seq/model/local_features.py): the k-mer index against a
direct reading, rotary positions depend on offsets only, and a model with every frame feature
on is strictly causal and trains the same reversibly as with plain autograd."""
from __future__ import annotations

import itertools

import pytest
import torch

from helpers import model_config
from reformer_seq import ReformerConfig, ReformerLM
from reformer_seq.model.local_features import CausalConv, kmer_index, rotary, rotary_frequencies

BASES = "ACGT"
IDS = {"A": 4, "C": 5, "G": 6, "T": 7, "N": 8}


def test_kmer_index_reads_the_kmer_ending_at_each_position():
    seq = "ACGTTGCANAC"
    x = torch.tensor([[IDS[c] for c in seq]])
    for k in (1, 2, 3):
        got = kmer_index(x, k)[0].tolist()
        for t in range(len(seq)):
            kmer = seq[t - k + 1:t + 1] if t >= k - 1 else None
            want = 4 ** k if kmer is None or "N" in kmer else int("".join(str(BASES.index(c)) for c in kmer), 4)
            assert got[t] == want, (k, t)


def test_every_codon_has_its_own_row():
    x = torch.tensor([[IDS[c] for c in "".join(p)] for p in itertools.product(BASES, repeat=3)])  # (64, 3)
    assert sorted(kmer_index(x, 3)[:, 2].tolist()) == list(range(64))


def test_rotary_scores_depend_only_on_the_offset():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)
    L = 40
    rq, rk = rotary(q.expand(1, L, 1, 16)), rotary(k.expand(1, L, 1, 16))  # the same vector at every position
    s = torch.einsum("bihd,bjhd->ij", rq, rk)  # (L, L)
    for off in (0, 1, 3, 7):
        diag = torch.diagonal(s, -off)
        torch.testing.assert_close(diag, diag[0].expand_as(diag), rtol=0, atol=1e-10)
    assert abs(rotary_frequencies(16)[0] * 3 - 2 * torch.pi) < 1e-12  # period 3 comes first
    assert not torch.allclose(torch.diagonal(s, -1)[0], torch.diagonal(s, -2)[0])


def test_dilated_conv_reads_every_third_base_only():
    conv = CausalConv(1, 4, dilation=3)
    with torch.no_grad():
        conv.conv.weight.fill_(1.0)
        conv.conv.bias.zero_()
    x = torch.zeros(1, 30, 1)
    x[0, 9, 0] = 1.0  # an impulse at 9 reaches 9, 12, 15, 18 (itself plus three codons on)
    y = conv(x)[0, :, 0] - x[0, :, 0]
    assert torch.nonzero(y).flatten().tolist() == [9, 12, 15, 18]


def frame_config(**kw) -> ReformerConfig:
    """helpers.model_config, width 32, with every frame feature on (convolution, codon convolution,
    3-mer embedding, rotary positions in the local layer)."""
    return model_config(**{**dict(dim=32, causal=True, max_seq_len=1024, attn_layers=["local", "lsh"], local_window=16,
                                  conv_kernel=5, frame_conv=4, kmer_embedding=3, local_rope=True, dropout=0.0,
                                  ff_chunk_size=64), **kw})


def dna(B, L, seed):
    return torch.randint(4, 9, (B, L), generator=torch.Generator().manual_seed(seed))


def test_frame_features_are_strictly_causal():
    torch.manual_seed(0)
    model = ReformerLM(frame_config()).eval()
    L = 200
    x = dna(1, L, 1)
    with torch.no_grad():
        base = model(x)
        for t in (0, 2, 50, 150):
            y = x.clone()
            y[:, t + 1:] = dna(1, L - t - 1, t + 2)
            out = model(y)
            torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-5)
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])


@pytest.mark.parametrize("rope", [True, False])
def test_reversible_equals_autograd_with_frame_features(rope):
    cfg = frame_config(local_rope=rope)
    torch.manual_seed(0)
    rev = ReformerLM(cfg).train().double()
    plain = ReformerLM(frame_config(local_rope=rope, reversible=False)).train().double()
    plain.load_state_dict(rev.state_dict())
    x = dna(2, 150, 3)
    outs, grads = [], []
    for m in (rev, plain):
        m.zero_grad()
        torch.manual_seed(5)
        out = m(x)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)).sum().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
    assert grads[0].keys() == grads[1].keys()
    for n in grads[1]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-8, atol=1e-10, msg=n)
    assert grads[0]["kmer_emb.emb.weight"].abs().sum() > 0


def test_rope_changes_the_local_layer():
    torch.manual_seed(0)
    a = ReformerLM(frame_config(local_rope=True)).eval()
    b = ReformerLM(frame_config(local_rope=False)).eval()
    b.load_state_dict(a.state_dict())
    x = dna(1, 64, 4)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
