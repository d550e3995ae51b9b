"""The GPU path's fused attention (model/attention/flex.py) against the float64 reference.

``SEQFORMER_KERNEL=gpu`` runs the CUDA code path on the CPU (eager FlexAttention), and
``SEQFORMER_KERNEL=torch`` the PyTorch reference of chunked attention: the same entry point
(:func:`chunked_attention`, with its autograd Function) under both must give the same outputs and
gradients, for LSH (1, 2, 4 rounds, causal and bidirectional), local and copy attention, with
padding and lengths that are not a multiple of the BlockMask's block. The hand-built banded
BlockMask (eager FlexAttention evaluates masks densely and ignores it) is checked against
``create_block_mask`` and through compiled CPU FlexAttention with a negative control.
"""
from __future__ import annotations


import pytest
import torch

from helpers import oracle_visibility, rand_qkv, reference_attention
from reformer_seq.model.attention import flex
from reformer_seq.model.attention.chunked import chunked_attention
from reformer_seq.model.attention.local import local_layout
from reformer_seq.model.attention.lsh import hash_codes, hash_rotations, lsh_layout, n_hash_factors
from reformer_seq.runtime.policy import use_policy

pytestmark = pytest.mark.skipif(not flex.available(), reason="this torch has no FlexAttention with AuxRequest")


def _layout(kind, B, H, L, D, C, R, causal, seed=4):
    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    real = torch.ones(B, L, dtype=torch.bool)
    real[-1, L - 37:] = False  # padding in the last sequence
    real[0, :3] = False
    if kind == "lsh":
        bits = torch.tensor([5, 4][:B])
        rot = hash_rotations(H, D, R, n_hash_factors(bits), device=torch.device("cpu"), generator=g)
        return qk, lsh_layout(qk, real, bits, rot.double(), R, C, causal)
    return qk, local_layout(real, H, C, causal)


def _attend(monkeypatch, path, q, k, v, lay, dout, **kw):
    """chunked_attention on ``path`` (gpu or torch): output and gradients, all float64."""
    monkeypatch.setenv("SEQFORMER_KERNEL", path)
    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in (q, k, v)]
    out = chunked_attention(*leaves, lay, **kw)
    (out * dout).sum().backward()
    return [out.detach()] + [None if t is None else t.grad for t in leaves]


def _compare(monkeypatch, q, k, v, lay, **kw):
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(v.shape, generator=g, dtype=torch.float64)
    ref = _attend(monkeypatch, "torch", q, k, v, lay, dout, **kw)
    got = _attend(monkeypatch, "gpu", q, k, v, lay, dout, **kw)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ref, got):
        if a is None:
            assert b is None
            continue
        assert a.abs().max() > 0, name  # a real comparison
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("R", [1, 2, 4])
@pytest.mark.parametrize("groups", ["all", "one"])
def test_lsh_equals_reference_float64(monkeypatch, causal, R, groups):
    """L = 200 is not a multiple of the 128-wide blocks; 'one': one round per fused call."""
    B, H, L, D, C = 2, 2, 200, 8, 8
    qk, lay = _layout("lsh", B, H, L, D, C, R, causal)
    g = torch.Generator().manual_seed(2)
    v = torch.randn(B, L, H, D, generator=g, dtype=torch.float64)
    with use_policy(**({"flex_round_elems": 1} if groups == "one" else {})):
        _compare(monkeypatch, qk.transpose(1, 2).contiguous(), None, v, lay)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("blk", [16, 128])
def test_local_equals_reference_float64(monkeypatch, causal, blk):
    B, H, L, D, W = 2, 2, 192, 8, 16
    _, lay = _layout("local", B, H, L, D, W, 1, causal)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, L, H, D, generator=g, dtype=torch.float64) for _ in range(3))
    with use_policy(flex_block=blk):
        _compare(monkeypatch, q, k, v, lay)


@pytest.mark.slow
def test_alone_rows_take_their_own_value(monkeypatch):
    """Many buckets and short chunks: queries with no same-bucket key anywhere get v exactly,
    with the reference's gradient (dv = dout there)."""
    B, H, L, D, C = 1, 2, 64, 8, 4
    g = torch.Generator().manual_seed(0)
    qk = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    rot = hash_rotations(H, D, 2, 2, device=torch.device("cpu"), generator=g).double()
    lay = lsh_layout(qk, torch.ones(B, L, dtype=torch.bool), torch.tensor([6]), rot, 2, C, True)
    monkeypatch.setenv("SEQFORMER_KERNEL", "gpu")
    q = qk.transpose(1, 2).contiguous()
    v = torch.randn(B, L, H, D, generator=g, dtype=torch.float64)
    out = chunked_attention(q, None, v, lay)
    same = (out == v).all(-1)  # (B, L, H)
    assert 0 < same.float().mean() < 1
    _compare(monkeypatch, q, None, v, lay)


def test_flex_equals_the_independent_oracle(monkeypatch):
    """The union-of-rounds oracle of tests/helpers.py (visibility from the definitions alone)."""
    monkeypatch.setenv("SEQFORMER_KERNEL", "gpu")
    for causal in (True, False):
        B, H, L, D, R, C = 1, 2, 64, 8, 3, 4
        qk, k, v = rand_qkv(B * H, L, D, seed=3, clustered=True)
        real = torch.ones(B, L, dtype=torch.bool)
        rot = hash_rotations(H, D, R, 1, device=torch.device("cpu"), generator=torch.Generator().manual_seed(5))
        lay = lsh_layout(qk.view(B, H, L, D), real, torch.full((B,), 3), rot, R, C, causal)
        vis = oracle_visibility(hash_codes(qk.view(B, H, L, D), rot, R).view(R, B * H, L).numpy(), causal, C)
        out = chunked_attention(qk.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), lay).squeeze(2)
        ref = reference_attention(qk.double(), k.double(), v.double(), vis)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_copy_attention_equals_reference(monkeypatch):
    """Copy attention (own keys, scale 1, D = 48, no self fallback in effect): outputs, the
    values' gradient and ``seen``, with a planted repeat and padding."""
    from reformer_seq.model.attention.copy_attention import CopyAttention

    torch.manual_seed(0)
    layer = CopyAttention(k=12, n_hashes=4).double().eval()
    g = torch.Generator().manual_seed(5)
    B, L = 2, 300
    tokens = torch.randint(4, 8, (B, L), generator=g)
    tokens[:, 200:260] = tokens[:, 20:80]  # a planted copy
    real = torch.ones(B, L, dtype=torch.bool)
    real[1, 250:] = False
    values = torch.randn(B, L, 2, 48, generator=g, dtype=torch.float64)
    dout = torch.randn(B, L, 2, 48, generator=g, dtype=torch.float64)
    res = {}
    for path in ("torch", "gpu"):
        monkeypatch.setenv("SEQFORMER_KERNEL", path)
        vals = values.clone().requires_grad_(True)
        out, seen = layer.attend(vals, tokens, real)
        (out * dout).sum().backward()
        res[path] = (out.detach(), vals.grad, seen)
    assert res["torch"][2][:, 200:260].float().mean() > 0.5  # the copy is found
    torch.testing.assert_close(res["gpu"][0], res["torch"][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(res["gpu"][1], res["torch"][1], rtol=0, atol=1e-12)
    assert torch.equal(res["gpu"][2], res["torch"][2])


# ----------------------------------------------------------------------------- the block mask
def _dense_blocks(num, idx, nb):
    """(nb, nb) bool from (1, 1, nb) counts and (1, 1, nb, W) lists."""
    dense = torch.zeros(nb, nb, dtype=torch.bool)
    for i in range(nb):
        for t in range(int(num[0, 0, i])):
            dense[i, int(idx[0, 0, i, t])] = True
    return dense


@pytest.mark.parametrize("blk", [16, 32, 128])
@pytest.mark.parametrize("shape", [(16, 1, 0, 0, 16), (16, 1, 0, -32, 32), (64, 1, 0, 0, 64), (64, 1, 1, -64, 64)])
def test_banded_block_mask_matches_create_block_mask(blk, shape):
    """The static band (chunk window and band, no data) through create_block_mask on every pair
    gives exactly the hand-built block lists, forward and transposed; L = 1008 is not a multiple of
    any block size."""
    from torch.nn.attention.flex_attention import create_block_mask

    C, back, fwd, lo, hi = shape
    L = 1008 if C == 16 else 1024 + 64 * 2  # a multiple of the chunk
    L = L - L % C

    def rule(b, h, q, kv):
        d, dc = q - kv, q // C - kv // C
        return (dc <= back) & (dc >= -fwd) & (d >= lo) & (d <= hi)

    ref = create_block_mask(rule, None, None, L, L, device="cpu", BLOCK_SIZE=blk)
    got = flex.banded_block_mask(L, C, back, fwd, blk, torch.device("cpu"))
    nb = -(-L // blk)
    want = _dense_blocks(ref.kv_num_blocks, ref.kv_indices, nb)
    if ref.full_kv_num_blocks is not None:
        want |= _dense_blocks(ref.full_kv_num_blocks, ref.full_kv_indices, nb)
    mine = _dense_blocks(got.kv_num_blocks, got.kv_indices, nb)
    assert torch.equal(mine, want)
    assert torch.equal(_dense_blocks(got.q_num_blocks, got.q_indices, nb), want.t())


@pytest.mark.slow
def test_compiled_cpu_flex_honours_the_block_mask():
    """Compiled CPU FlexAttention (inference, full-width lists) with the hand-built mask equals the
    eager result, and a diagonal-only mask (negative control) does not."""
    pytest.importorskip("torch._inductor")
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    L, C, D, blk = 256, 16, 16, 32
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, L, D, generator=g) for _ in range(3))
    bk = torch.randint(0, 3, (1, 2, L), generator=g)

    def rule(b, h, qi, kv):
        d = qi - kv
        return (bk[b, h, qi] == bk[b, h, kv]) & (d >= 0) & (d <= C)

    eager = flex_attention(q, k, v, block_mask=flex.banded_block_mask(L, C, 1, 0, blk, q.device, rule))
    try:
        compiled = torch.compile(flex_attention, dynamic=False)
        got = compiled(q, k, v, block_mask=flex.banded_block_mask(L, C, 1, 0, blk, q.device, rule, full_width=True))
        nb = L // blk
        diag = torch.arange(nb, dtype=torch.int32).view(1, 1, nb, 1).expand(1, 1, nb, nb).contiguous()
        ones = torch.ones(1, 1, nb, dtype=torch.int32)
        control = BlockMask.from_kv_blocks(ones, diag, BLOCK_SIZE=blk, mask_mod=rule)
        bad = compiled(q, k, v, block_mask=control)
    except Exception as e:  # noqa: BLE001 - no C++ compiler for inductor here
        pytest.skip(f"torch.compile on this CPU: {type(e).__name__}: {str(e)[:200]}")
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
    assert (bad - eager).abs().max() > 1e-2
