"""ReformerLM: reversible vs autograd, strict causality, padding invariance, determinism,
chunked feed-forward, axial positions and bf16 autocast against fp32. (The golden value is
test_golden.py: a committed checkpoint and its per-base log-probabilities; encode(layer=) on the
tiny run.)"""
from __future__ import annotations

import pytest
import torch

from helpers import model_config
from reformer_seq.runtime.policy import use_policy
from reformer_seq import ConfigError, ReformerConfig, ReformerLM
from reformer_seq.model.positions import AxialPositionalEncoding
from reformer_seq.model.feedforward import FeedForward
from reformer_seq.errors import SeqformerError
from reformer_seq.tasks.pretrained import load_pretrained


def small_config(**kw) -> ReformerConfig:
    """helpers.model_config with 12 tokens, width 32, 1,024 positions and feed-forward chunks of 64."""
    return model_config(**{**dict(vocab_size=12, dim=32, causal=True, max_seq_len=1024, reversible=True,
                                  attention="lsh", dropout=0.0, ff_chunk_size=64), **kw})


def tokens(B, L, vocab=12, seed=0):
    return torch.randint(0, vocab, (B, L), generator=torch.Generator().manual_seed(seed))


def grads(model, x, seed, mask=None):
    model.zero_grad()
    torch.manual_seed(seed)
    out = model(x, mask=mask)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(99), dtype=out.dtype)
    (out * w).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("layers", [["lsh"], ["local", "lsh"], ["full", "lsh", "local"]])
def test_reversible_gradients_equal_plain_autograd(layers, dtype, tol):
    """RevNet backward (inputs rebuilt from outputs, RNG replayed) = ordinary autograd, with
    dropout and random hash rotations active (training mode). Every parameter's gradient agrees
    to ``tol`` relative (float32: the reconstruction x2 = y2 - G(y1) rounds)."""
    cfg = small_config(depth=3, dropout=0.1, attn_layers=layers)
    torch.manual_seed(0)
    rev = ReformerLM(cfg).train().to(dtype)
    plain = ReformerLM(small_config(depth=3, dropout=0.1, attn_layers=layers, reversible=False)).train().to(dtype)
    plain.load_state_dict(rev.state_dict())  # same parameters, same names
    x = tokens(2, 200)
    out_r, g_r = grads(rev, x, seed=5)
    out_p, g_p = grads(plain, x, seed=5)
    assert rel_err(out_r, out_p) < tol
    for name in g_p:
        assert rel_err(g_r[name], g_p[name]) < tol, name
    # dropout is really on: another seed changes the output
    out_other, _ = grads(rev, x, seed=6)
    assert not torch.allclose(out_other, out_r)


def test_reversible_backward_in_eval_mode():
    cfg = small_config()
    torch.manual_seed(0)
    rev = ReformerLM(cfg).eval().double()
    plain = ReformerLM(small_config(reversible=False)).eval().double()
    plain.load_state_dict(rev.state_dict())
    x = tokens(1, 100)
    _, g_r = grads(rev, x, seed=1)
    _, g_p = grads(plain, x, seed=1)
    for name in g_p:
        assert rel_err(g_r[name], g_p[name]) < 1e-10, name


@pytest.mark.parametrize("layers", [["lsh"], ["local", "lsh"], ["full"]])
def test_strict_causality(layers):
    """Logits at positions <= t do not change when tokens after t change (LSH included)."""
    torch.manual_seed(0)
    model = ReformerLM(small_config(attn_layers=layers, conv_kernel=3)).eval()
    L = 256
    x = tokens(1, L, seed=1)
    with torch.no_grad():
        base = model(x)
        for t in (0, 17, 100, 200):
            y = x.clone()
            y[:, t + 1:] = tokens(1, L - t - 1, seed=t + 2)
            out = model(y)
            torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-5)
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])  # the change is seen later


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("layers", [["lsh"], ["local"], ["full"]])
def test_padding_invariance(causal, layers):
    """Outputs at real positions do not depend on how much padding follows (or what it holds)."""
    torch.manual_seed(0)
    model = ReformerLM(small_config(causal=causal, attn_layers=layers)).eval()
    x = tokens(1, 90, seed=3)
    with torch.no_grad():
        ref = model(x)
        for extra in (1, 7, 40):
            xp = torch.cat([x, tokens(1, extra, seed=extra)], dim=1)
            mask = torch.ones_like(xp, dtype=torch.bool)
            mask[:, 90:] = False
            out = model(xp, mask=mask)
            torch.testing.assert_close(out[:, :90], ref, rtol=1e-5, atol=1e-5)
    # and a batch of two lengths equals each row run alone
    x2 = tokens(1, 60, seed=4)
    batch = torch.cat([x, torch.cat([x2, torch.zeros(1, 30, dtype=torch.long)], 1)])
    mask = torch.ones_like(batch, dtype=torch.bool)
    mask[1, 60:] = False
    with torch.no_grad():
        out = model(batch, mask=mask)
        torch.testing.assert_close(out[1, :60], model(x2)[0], rtol=1e-5, atol=1e-5)


def test_eval_is_deterministic_and_training_hashes_vary():
    torch.manual_seed(0)
    model = ReformerLM(small_config()).eval()
    x = tokens(2, 300)
    with torch.no_grad():
        a, b = model(x), model(x)
        assert torch.equal(a, b)
        model.train()
        torch.manual_seed(1)
        c = model(x)
        torch.manual_seed(2)
        d = model(x)
    assert not torch.allclose(c, d)  # random rotations while training


def test_chunked_feedforward_equals_unchunked():
    torch.manual_seed(0)
    ff = FeedForward(16, 4, chunk_size=7)
    x = torch.randn(2, 50, 16)
    torch.testing.assert_close(ff(x), ff.net(x), rtol=0, atol=1e-6)
    assert len(ff.slices(50)) == 8


def test_feedforward_auto_chunks_follow_input_size():
    """chunk_size 0 (the config default): 4096 positions below 2**25 elements, 16384 from there;
    the slices tile the sequence exactly."""
    ff = FeedForward(64, 4)
    for B, L, want in [(1, 65536, 4096), (8, 65536, 16384), (1, 262144, 4096), (1, 524288, 16384), (1, 5000, 4096)]:
        sl = ff.slices(L, B)
        assert sl[0] == slice(0, min(want, L)), (B, L)
        assert sl[-1].stop == L and all(a.stop == b.start for a, b in zip(sl, sl[1:]))
    with pytest.raises(ConfigError, match="ff_chunk_size must be 0"):
        ReformerConfig(ff_chunk_size=-1)


def test_axial_positions_factor_and_errors():
    cfg = ReformerConfig(max_seq_len=65536)
    assert cfg.axial == (256, 256)
    assert ReformerConfig(max_seq_len=1 << 20).axial == (1024, 1024)
    with pytest.raises(ConfigError, match=r"axial_shape \(128, 256\) covers 32,768 positions but max_seq_len is "
                                          r"65,536; use \(256, 256\)"):
        ReformerConfig(max_seq_len=65536, axial_shape=(128, 256))
    with pytest.raises(ValueError, match="use"):
        AxialPositionalEncoding(8, (3, 5), 16)
    pe = AxialPositionalEncoding(8, (4, 4), 16)
    full = pe(16)
    torch.testing.assert_close(pe(5), full[:5])  # shorter inputs use the first L positions
    torch.testing.assert_close(full[6], pe.row[1, 0] + pe.col[0, 2])  # p = i * b + j
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        pe(17)


def test_bad_inputs_raise_clear_errors():
    model = ReformerLM(small_config())
    with pytest.raises(ValueError, match="exceeds max_seq_len 1,024"):
        model(torch.zeros(1, 2000, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 12\)"):
        model(torch.full((1, 10), 12))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        model(torch.zeros(1, 10, dtype=torch.long), mask=torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(ConfigError, match="unknown attention kind|not one of"):
        ReformerConfig(attention="sparse")


def test_bf16_autocast_is_close_to_fp32():
    """The same model, input and hash rotations under bf16 autocast and in fp32: bf16 keeps 8
    mantissa bits (relative rounding 2**-9), and a bf16 query can fall into another LSH bucket, so
    the tolerances are loose but stated: the loss within 0.1% (measured 0.02%), the logits within
    10% in relative norm (measured 1-4%), and every parameter's gradient pointing the same way
    (cosine >= 0.9; measured >= 0.97, the LSH query/key projection the lowest)."""
    torch.manual_seed(0)
    model = ReformerLM(small_config(attn_layers=["local", "lsh"])).train()
    x = tokens(1, 128)

    def run(bf16: bool):
        model.zero_grad()
        torch.manual_seed(7)  # the same random rotations in both runs
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out.float()[0, :-1], x[0, 1:])
        loss.backward()
        return loss.item(), out.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss32, out32, g32 = run(False)
    loss16, out16, g16 = run(True)
    assert abs(loss16 - loss32) <= 1e-3 * loss32, (loss16, loss32)
    assert rel_err(out16, out32) < 0.1
    for name in g32:
        assert torch.isfinite(g16[name]).all(), name
        cos = torch.nn.functional.cosine_similarity(g16[name].flatten(), g32[name].flatten(), dim=0)
        assert cos >= 0.9, (name, float(cos))


def test_encode_shape_and_forward_consistency():
    torch.manual_seed(0)
    model = ReformerLM(small_config()).eval()
    x = tokens(2, 33)
    with torch.no_grad():
        h = model.encode(x)
        assert h.shape == (2, 33, 32)
        torch.testing.assert_close(torch.log_softmax(model.to_logits(h), -1), model(x))


@pytest.mark.parametrize("layers", [["lsh"], ["local", "lsh"]])
def test_head_groups_equal_all_heads_at_once(layers):
    """Long inputs attend a head group at a time (and the reversible backward frees each group
    before the next); forcing one head per group changes nothing, gradients included."""
    cfg = small_config(depth=2, dropout=0.1, attn_layers=layers, heads=4)
    torch.manual_seed(0)
    rev = ReformerLM(cfg).train()
    plain = ReformerLM(small_config(depth=2, dropout=0.1, attn_layers=layers, heads=4, reversible=False)).train()
    plain.load_state_dict(rev.state_dict())
    x = tokens(2, 150)
    out_p, g_p = grads(plain, x, seed=3)  # all heads together
    with use_policy(head_group_elems=1):  # one head per group
        assert len(rev.layers[0].attn.head_groups(2, 160)) == 4
        out_r, g_r = grads(rev, x, seed=3)
    assert rel_err(out_r, out_p) < 1e-5
    for name in g_p:
        assert rel_err(g_r[name], g_p[name]) < 1e-5, name


def test_axial_positions_with_a_first_row_are_the_later_positions():
    from reformer_seq.model.positions import AxialPositionalEncoding

    pe = AxialPositionalEncoding(8, (16, 16), 256)
    full = pe(256)
    assert torch.equal(pe(40, first_row=3), full[48:88])
    with pytest.raises(ValueError):
        pe(40, first_row=14)  # 3 rows from row 14 leave the 16-row grid
    torch.manual_seed(0)
    rows = {pe.random_first_row(40) for _ in range(200)}
    assert rows == set(range(14))  # every start row that fits is drawn


def test_random_position_offset_only_in_training():
    cfg = ReformerConfig(vocab_size=9, dim=16, depth=1, heads=2, bucket_size=8, max_seq_len=1024,
                         attn_layers=["local"], local_window=16, random_position_offset=True)  # no random hashing
    model = ReformerLM(cfg)
    ids = torch.randint(4, 8, (1, 64))
    model.eval()
    with torch.no_grad():
        a, b = model(ids), model(ids)
    assert torch.equal(a, b)  # evaluation: positions from 0, deterministic
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        outs = [model(ids) for _ in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])  # training: the offset changes
def test_full_attention_refuses_lengths_past_the_dense_limit():
    """A ``full`` layer checks the size of its dense (L, L) bias before building it: past
    the execution policy's dense_max_elems (lowered here to 128 * 128) it raises ConfigError naming attn_layers and the
    lsh/local alternatives; at the limit it runs. The stated default refuses 64K (16 GiB)."""
    from reformer_seq.model.attention import exact as fa

    with pytest.raises(ConfigError, match="over the limit of 268,435,456"):
        fa.check_dense_size(65536)
    fa.check_dense_size(16384)  # exactly 2**28: allowed
    model = ReformerLM(small_config(attn_layers=["local", "full"], local_window=16))
    with use_policy(dense_max_elems=128 * 128):
        model(tokens(1, 128))
        model(tokens(1, 128), mask=torch.ones(1, 128, dtype=torch.bool))
        with pytest.raises(ConfigError) as err:
            model(tokens(1, 136))
        msg = str(err.value)
        for text in ("length 136", "attn_layers", "'lsh'", "'local'", "dense_max_elems"):
            assert text in msg, msg
        with pytest.raises(ConfigError, match=r"dense \(B, L, L\) bias"):  # padding: one bias per sequence
            model(tokens(2, 128), mask=torch.ones(2, 128, dtype=torch.bool).index_fill_(1, torch.tensor([127]), False))
    model(tokens(1, 136))  # the policy is restored on leaving the block


def test_encode_layers(tiny_run):
    model, tok, _ = load_pretrained(tiny_run)
    model.eval()
    x = torch.from_numpy(tok.encode("ACGTTGCA" * 8)).long()[None]
    with torch.no_grad():
        final = model.encode(x)
        assert torch.equal(model.encode(x, layer=2), final) and torch.equal(model.encode(x, layer=-1), final)
        h0 = model.encode(x, layer=0)
        emb = model.token_emb(x) + model.pos_emb(x.shape[1])
        assert torch.allclose(h0, model.norm(model.conv(emb)), atol=1e-6)
        assert not torch.allclose(model.encode(x, layer=1), final)
    with pytest.raises(SeqformerError, match="layers 0"):
        model.encode(x, layer=3)
