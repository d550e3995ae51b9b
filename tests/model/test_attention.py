"""Attention kernels against exact references (equivalence and oracle tests).

The reference (tests/helpers.py: reference_attention, oracle_visibility) is written
independently of the library: a dense softmax over an explicit visibility matrix built from the
definitions (buckets, positions, sorted order), with the shared-QK rule "a query sees itself only
when it sees nothing else".
"""
from __future__ import annotations

import os
import platform

import pytest
import torch
import torch.nn.functional as F

from helpers import oracle_visibility, rand_qkv, reference_attention
from reformer_seq.runtime.policy import current_policy, use_policy
from reformer_seq.model.attention.chunked import chunked_attention as _chunked_attention
from reformer_seq.model.attention.exact import full_attention
from reformer_seq.model.attention.local import local_layout
from reformer_seq.model.attention.lsh import (FACTOR, bucket_bits, hash_codes, hash_rotations, lsh_layout,
                                        n_hash_factors)


def chunked_attention(q, k, v, lay, **kw):
    """The library's (B, L, H, D) entry point on (G, L, D) tensors (as B = G, H = 1)."""
    return _chunked_attention(q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), lay, **kw).squeeze(2)


# ----------------------------------------------------------------------------- hashing
def test_hash_codes_match_per_factor_argmax():
    """Factorised codes = concatenation of independent angular hashes argmax([xR; -xR])."""
    B, H, L, D, R = 2, 3, 40, 8, 2
    g = torch.Generator().manual_seed(1)
    qk = torch.randn(B, H, L, D, generator=g)
    rot = hash_rotations(H, D, R, 2, device=torch.device("cpu"), generator=g)  # (H, D, 2*R*4)
    codes = hash_codes(qk, rot, R)  # (R, B, H, L)
    half = FACTOR // 2
    for r in range(R):
        expect = torch.zeros(B, H, L, dtype=torch.long)
        for f in range(2):
            cols = rot[:, :, (f * R + r) * half:(f * R + r + 1) * half]  # (H, D, half)
            proj = torch.einsum("bhld,hdk->bhlk", qk, cols)
            expect = expect * FACTOR + torch.cat([proj, -proj], -1).argmax(-1)
        assert torch.equal(codes[r], expect)


def test_bucket_bits_track_length_and_hashing_cost_is_logarithmic():
    real = torch.tensor([16, 1000, 65536, 1 << 20])
    bits = bucket_bits(real, 16, None)
    assert bits.tolist() == [1, 6, 12, 16]  # nearest power of two of real_len / 16, at least 2 buckets
    assert n_hash_factors(bits) == 6  # 1M tokens: 65,536 buckets from 6 factors of 8 directions
    assert bucket_bits(real, 16, 64).tolist() == [6] * 4


# ----------------------------------------------------------------------------- LSH vs exact
def _single_bucket_layout(q, causal, R):
    G, L, D = q.shape
    real = torch.ones(1, L, dtype=torch.bool)
    bits = torch.zeros(1, dtype=torch.long)  # one bucket
    rot = hash_rotations(G, D, R, 0, device=q.device)
    return lsh_layout(q.view(1, G, L, D), real, bits, rot, R, bucket_size=L, causal=causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("R", [1, 3])
def test_lsh_single_bucket_equals_exact_shared_qk(causal, R):
    """One bucket and one chunk covering the sequence: LSH attention is exact attention."""
    G, L, D = 3, 48, 8
    qk, k, v = rand_qkv(G, L, D)
    lay = _single_bucket_layout(qk, causal, R)
    out = chunked_attention(qk, k, v, lay)
    vis = torch.ones(G, L, L, dtype=torch.bool)
    if causal:
        vis = vis.tril()
    ref = reference_attention(qk.double(), k.double(), v.double(), vis)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # the SDPA-based full attention is the same function
    full = full_attention(qk.view(1, G, L, D), k.view(1, G, L, D), v.view(1, G, L, D), None, causal)
    torch.testing.assert_close(full.view(G, L, D).double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_multi_round_lsh_equals_exact_attention_over_union(causal):
    """With the log N_ij correction, combining rounds gives exact softmax over the union of the
    rounds' key sets, each pair counted once however many rounds it meets in."""
    B, H, L, D, R, C = 1, 2, 64, 8, 3, 4
    qk, k, v = rand_qkv(B * H, L, D, seed=3, clustered=True)
    real = torch.ones(B, L, dtype=torch.bool)
    bits = torch.full((B,), 3)  # 8 buckets
    rot = hash_rotations(H, D, R, 1, device=torch.device("cpu"), generator=torch.Generator().manual_seed(5))
    lay = lsh_layout(qk.view(B, H, L, D), real, bits, rot, R, C, causal)
    buckets = (hash_codes(qk.view(B, H, L, D), rot, R) >> 0).view(R, B * H, L).numpy()
    vis = oracle_visibility(buckets, causal, C)
    assert 0 < vis.float().mean() < 0.5  # a real test: neither empty nor dense
    multi = 0
    for r in range(R):  # pairs meeting in several rounds exist, so the correction matters
        multi += (buckets[r][:, :, None] == buckets[r][:, None, :])
    assert (multi > 1).any()
    out = chunked_attention(qk, k, v, lay)
    ref = reference_attention(qk.double(), k.double(), v.double(), vis)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_kernel_gradients_match_autograd_reference(causal):
    B, H, L, D, R, C = 1, 2, 64, 8, 3, 4
    qk, _, v = rand_qkv(B * H, L, D, seed=7, clustered=True)
    rot = hash_rotations(H, D, R, 1, device=torch.device("cpu"), generator=torch.Generator().manual_seed(2))
    lay = lsh_layout(qk.view(B, H, L, D), torch.ones(B, L, dtype=torch.bool), torch.full((B,), 3), rot, R, C, causal)
    buckets = hash_codes(qk.view(B, H, L, D), rot, R).view(R, B * H, L).numpy()
    vis = oracle_visibility(buckets, causal, C)
    w = torch.randn(B * H, L, D, dtype=torch.float64)

    q1, v1 = qk.clone().requires_grad_(), v.clone().requires_grad_()
    (chunked_attention(q1, F.normalize(q1, dim=-1), v1, lay, max_block_elems=512).double() * w).sum().backward()
    q2, v2 = qk.double().requires_grad_(), v.double().requires_grad_()
    (reference_attention(q2, F.normalize(q2, dim=-1), v2, vis) * w).sum().backward()
    torch.testing.assert_close(q1.grad.double(), q2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v1.grad.double(), v2.grad, rtol=1e-4, atol=1e-5)


def test_block_size_does_not_change_results():
    """Processing chunks in small blocks (bounded memory) is exact."""
    B, H, L, D, R, C = 1, 2, 128, 8, 2, 8
    qk, k, v = rand_qkv(B * H, L, D, seed=11, clustered=True)
    rot = hash_rotations(H, D, R, 1, device=torch.device("cpu"), generator=torch.Generator().manual_seed(2))
    lay = lsh_layout(qk.view(B, H, L, D), torch.ones(B, L, dtype=torch.bool), torch.full((B,), 3), rot, R, C, True)
    a = chunked_attention(qk, k, v, lay)
    b = chunked_attention(qk, k, v, lay, max_block_elems=1)  # one chunk per block
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- local
@pytest.mark.parametrize("causal", [True, False])
def test_local_attention_equals_banded_exact_attention(causal):
    B, H, L, D, W = 2, 2, 50, 8, 8
    G = B * H
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(G, 56, D, generator=g) for _ in range(3))  # padded to a multiple of W
    real = torch.zeros(B, 56, dtype=torch.bool)
    real[:, :L] = True
    lay = local_layout(real, H, W, causal)
    out = chunked_attention(q, k, v, lay)[:, :L]
    i = torch.arange(L)
    d = i[:, None] - i[None, :]
    vis = (d >= 0) & (d <= W) if causal else d.abs() <= W
    ref = reference_attention(q[:, :L].double(), k[:, :L].double(), v[:, :L].double(),
                              vis.expand(G, L, L), self_only_if_alone=False)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- compiled kernel
def _layouts(B, H, L, D, C, causal):
    g = torch.Generator().manual_seed(4)
    qk = torch.randn(B, H, L, D, generator=g)
    real = torch.ones(B, L, dtype=torch.bool)
    real[1, L - 37:] = False  # padding in the second sequence
    real[0, :3] = False
    bits = torch.tensor([5, 4])
    rot = hash_rotations(H, D, 3, n_hash_factors(bits), device=torch.device("cpu"), generator=g)
    yield "lsh", qk, lsh_layout(qk, real, bits, rot, 3, C, causal)
    yield "local", qk, local_layout(real, H, 2 * C, causal)


def _kernel_inputs(qk, B, H, L, D):
    """q (the layout's vectors), unit keys k, v and dout as (G, L, D) tensors."""
    G = B * H
    g = torch.Generator().manual_seed(9)
    q = qk.reshape(G, L, D).contiguous()
    k = F.normalize(torch.randn(G, L, D, generator=g), dim=-1)
    return q, k, torch.randn(G, L, D, generator=g), torch.randn(G, L, D, generator=g)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D", [8, 12, 16])
def test_compiled_kernel_equals_reference(causal, D):
    """The C kernel (sparse-window, vectorised) and the dense PyTorch reference agree, forward
    and backward, for LSH and local layouts with padding."""
    from reformer_seq.model.attention import chunked as ca
    from reformer_seq.model.attention import kernel as kernels

    if kernels.library() is None:
        pytest.skip(f"compiled kernel unavailable, only the reference path runs: {kernels.unavailable_reason()}")
    B, H, L, C = 2, 2, 256, 8
    for name, qk, lay in _layouts(B, H, L, D, C, causal):
        G = B * H
        q, k, v, dout = _kernel_inputs(qk, B, H, L, D)
        o1, l1 = ca.chunked_attention_forward(q, k, v, lay, 0.3)
        o2, l2 = kernels.forward(q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), lay, 0.3)
        o2 = o2.squeeze(2)
        torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-5, msg=name)
        assert torch.equal(torch.isinf(l1), torch.isinf(l2)), name
        torch.testing.assert_close(l2[~torch.isinf(l2)], l1[~torch.isinf(l1)], rtol=1e-5, atol=1e-5)
        u = lambda t: t.unsqueeze(2)  # noqa: E731 - (G, L, D) as (B=G, L, H=1, D)
        for a, b in zip(kernels.backward(u(q), u(k), u(v), u(o2), l2, u(dout), lay, 0.3),
                        ca.chunked_attention_backward(q, k, v, o1, l1, dout, lay, 0.3)):
            torch.testing.assert_close(a.squeeze(2), b, rtol=1e-4, atol=1e-5, msg=name)
        # and the real (B, L, H, D) layout with H > 1: row g = b * H + h
        qb, kb, vb, db = (t.view(B, H, L, D).transpose(1, 2).contiguous() for t in (q, k, v, dout))
        o3, l3 = kernels.forward(qb, kb, vb, lay, 0.3)
        torch.testing.assert_close(o3.transpose(1, 2).reshape(G, L, D), o1, rtol=1e-5, atol=1e-5, msg=name)
        dq3 = kernels.backward(qb, kb, vb, o3, l3, db, lay, 0.3)[0]
        dq1 = ca.chunked_attention_backward(q, k, v, o1, l1, dout, lay, 0.3)[0]
        torch.testing.assert_close(dq3.transpose(1, 2).reshape(G, L, D), dq1, rtol=1e-4, atol=1e-5, msg=name)


def test_compiled_kernel_segments_change_nothing():
    """The kernel works through each round's sorted order in segments (2**18 queries by default,
    so tests' inputs are one segment); many short segments give the one-segment results, forward
    and backward, shared-QK and given keys, causal and not (look-ahead windows: one segment)."""
    from reformer_seq.model.attention import kernel as kernels

    if kernels.library() is None:
        pytest.skip(f"compiled kernel unavailable, only the reference path runs: {kernels.unavailable_reason()}")
    B, H, L, D, C = 2, 2, 256, 16, 8
    for causal in (True, False):
        for n, (name, qk, lay) in enumerate(_layouts(B, H, L, D, C, causal)):
            g = torch.Generator().manual_seed(21 + n)
            q = qk.transpose(1, 2).contiguous()  # (B, L, H, D)
            v, dout = torch.randn(B, L, H, D, generator=g), torch.randn(B, L, H, D, generator=g)
            for k in (None, F.normalize(torch.randn(B, L, H, D, generator=g), dim=-1)):
                runs = []
                for rows in (None, 24):  # 24 rows of chunk 8: 3 chunks a segment, the last one short
                    with use_policy(**({"kernel_segment_rows": rows} if rows else {})):
                        out, lse = kernels.forward(q, k, v, lay, 0.25)
                        grads = kernels.backward(q, k, v, out, lse, dout, lay, 0.25)
                    runs.append((out, lse) + tuple(t for t in grads if t is not None))
                for a, b in zip(*runs):
                    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=f"{name} causal={causal}")


def _kernel_jobs(seed: int) -> list[tuple]:
    """(q, k, v, dout, layout) for one causal LSH and one local layout (B 2, H 2, L 256, D 16, C 8);
    ``k`` None for LSH (shared QK)."""
    B, H, L, D, C = 2, 2, 256, 16, 8
    jobs = []
    for n, (name, qk, lay) in enumerate(_layouts(B, H, L, D, C, causal=True)):
        g = torch.Generator().manual_seed(seed + n)
        q = qk.transpose(1, 2).contiguous()  # (B, L, H, D)
        v, dout = torch.randn(B, L, H, D, generator=g), torch.randn(B, L, H, D, generator=g)
        k = None if name == "lsh" else F.normalize(torch.randn(B, L, H, D, generator=g), dim=-1)
        jobs.append((q, k, v, dout, lay))
    return jobs


def _kernel_run(job: tuple) -> tuple:
    """The compiled kernel's forward and backward of one job: (out, lse, dq[, dk], dv)."""
    from reformer_seq.model.attention import kernel as kernels

    q, k, v, dout, lay = job
    out, lse = kernels.forward(q, k, v, lay, 0.25)
    return (out, lse) + tuple(t for t in kernels.backward(q, k, v, out, lse, dout, lay, 0.25) if t is not None)


def test_compiled_kernel_from_several_threads_and_after_release():
    """The kernel keeps its work buffers between calls (one arena); calls from several threads at
    once (one gets the arena, the others their own buffers), calls of other sizes, and a call
    after release_buffers() all give the single-threaded result."""
    import threading

    from reformer_seq.model.attention import kernel as kernels

    if kernels.library() is None:
        pytest.skip(f"compiled kernel unavailable, only the reference path runs: {kernels.unavailable_reason()}")
    jobs = _kernel_jobs(seed=11)
    run = _kernel_run
    expected = [run(j) for j in jobs]
    kernels.release_buffers()
    results: dict = {}

    def worker(i):
        results[i] = [run(jobs[(i + r) % len(jobs)]) for r in range(4)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        for r in range(4):
            for got, want in zip(results[i][r], expected[(i + r) % len(jobs)]):
                assert torch.equal(got, want), (i, r)


def test_compiled_kernel_segment_length_travels_with_each_call():
    """The segment length is an argument of every kernel call, not state the library keeps: two
    threads calling the kernel at once, each switching the policy to its own segment length
    (24 rows, and the default), both get the one-thread results. With a length kept in the library,
    one thread's setting changed the other's call half-way (buffers sized for one length, filled
    with another)."""
    import threading

    from reformer_seq.model.attention import kernel as kernels
    from reformer_seq.runtime.policy import set_policy

    if kernels.library() is None:
        pytest.skip(f"compiled kernel unavailable, only the reference path runs: {kernels.unavailable_reason()}")
    assert not hasattr(kernels.library(), "seq_set_segment_rows"), "the library still keeps a segment length"
    jobs = _kernel_jobs(seed=31)
    run = _kernel_run
    expected = [run(j) for j in jobs]
    failures: list = []

    def worker(rows: int) -> None:
        try:
            for r in range(60):
                set_policy(kernel_segment_rows=rows)
                for got, want in zip(run(jobs[r % len(jobs)]), expected[r % len(jobs)]):
                    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"{rows} rows: {e}")

    with use_policy():  # the policy in force before the test comes back
        threads = [threading.Thread(target=worker, args=(rows,)) for rows in (24, 1 << 18, 16, 1 << 18)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not failures, failures


def test_compiled_hashing_and_sort_equal_reference(monkeypatch):
    from reformer_seq.model.attention import kernel as kernels

    if kernels.library() is None:
        pytest.skip(f"compiled kernel unavailable, only the reference path runs: {kernels.unavailable_reason()}")
    for causal in (True, False):
        for name, qk, lay in _layouts(2, 3, 512, 16, 16, causal):
            if name != "lsh":
                continue
            real = torch.ones(2, 512, dtype=torch.bool)
            real[1, 400:] = False
            bits = torch.tensor([6, 5])
            rot = hash_rotations(3, 16, 4, n_hash_factors(bits), device=torch.device("cpu"),
                                 generator=torch.Generator().manual_seed(1))
            a = lsh_layout(qk, real, bits, rot, 4, 16, causal)
            monkeypatch.setenv("SEQFORMER_KERNEL", "torch")
            b = lsh_layout(qk, real, bits, rot, 4, 16, causal)
            monkeypatch.delenv("SEQFORMER_KERNEL")
            assert torch.equal(a.perm.long(), b.perm.long()) and torch.equal(a.u, b.u)
            assert torch.equal(a.buckets.long(), b.buckets.long())


@pytest.mark.parametrize("mode", ["c", "torch"])
def test_shared_qk_keys_formed_inside_equal_explicit_normalize(mode, monkeypatch):
    """k=None (keys normalised inside, their gradient chained into dq) equals passing
    F.normalize(q) explicitly and letting autograd differentiate the normalisation."""
    from reformer_seq.model.attention import kernel as kernels

    if mode == "c" and kernels.library() is None:
        pytest.skip(f"compiled kernel unavailable, only the reference path runs: {kernels.unavailable_reason()}")
    monkeypatch.setenv("SEQFORMER_KERNEL", mode)
    for name, qk, lay in _layouts(2, 2, 128, 8, 8, True):
        if name != "lsh":
            continue
        g = torch.Generator().manual_seed(3)
        q0 = qk.transpose(1, 2).contiguous()  # (B, L, H, D)
        v0, w = torch.randn(q0.shape, generator=g), torch.randn(q0.shape, generator=g)
        q1, v1 = q0.clone().requires_grad_(), v0.clone().requires_grad_()
        (_chunked_attention(q1, None, v1, lay) * w).sum().backward()
        q2, v2 = q0.clone().requires_grad_(), v0.clone().requires_grad_()
        (_chunked_attention(q2, F.normalize(q2, dim=-1), v2, lay) * w).sum().backward()
        torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- kernel builds
def _check_library(lib, monkeypatch) -> None:
    """A kernel library (any compiler, flags, branch) against the PyTorch reference: forward and
    backward on LSH and local layouts (causal or not, given keys and shared-QK), the hash codes
    and the bucket sort."""
    from reformer_seq.model.attention import chunked as ca
    from reformer_seq.model.attention import kernel as kernels

    B, H, L, D, C = 2, 2, 256, 16, 8
    u = lambda t: t.unsqueeze(2)  # noqa: E731 - (G, L, D) as (B=G, L, H=1, D)
    for causal in (True, False):
        for name, qk, lay in _layouts(B, H, L, D, C, causal):
            q, k, v, dout = _kernel_inputs(qk, B, H, L, D)
            for keys in (k, None):
                kk = F.normalize(q, dim=-1) if keys is None else keys
                o1, l1 = ca.chunked_attention_forward(q, kk, v, lay, 0.3)
                o2, l2 = kernels.forward(u(q), None if keys is None else u(keys), u(v), lay, 0.3, lib=lib)
                torch.testing.assert_close(o2.squeeze(2), o1, rtol=1e-5, atol=1e-5, msg=name)
                assert torch.equal(torch.isinf(l1), torch.isinf(l2)), name
                torch.testing.assert_close(l2[~torch.isinf(l2)], l1[~torch.isinf(l1)], rtol=1e-5, atol=1e-5)
                if keys is not None:  # (shared-QK's chained key gradient: test_shared_qk_keys_formed_inside)
                    got = kernels.backward(u(q), u(k), u(v), o2, l2, u(dout), lay, 0.3, lib=lib)
                    want = ca.chunked_attention_backward(q, k, v, o1, l1, dout, lay, 0.3)
                    for a, b in zip(got, want):
                        torch.testing.assert_close(a.squeeze(2), b, rtol=1e-4, atol=1e-5, msg=name)
    # hashing and sorting, against the reference branches of lsh_attention
    monkeypatch.setenv("SEQFORMER_KERNEL", "torch")
    B, H, L, D, C, R = 2, 3, 512, 16, 16, 4
    for causal in (True, False):
        qk = torch.randn(B, H, L, D, generator=torch.Generator().manual_seed(5 + causal))
        real = torch.ones(B, L, dtype=torch.bool)
        real[1, 400:] = False
        bits = torch.tensor([6, 5])
        nf = n_hash_factors(bits)
        rot = hash_rotations(H, D, R, nf, device=torch.device("cpu"), generator=torch.Generator().manual_seed(1))
        want_codes = hash_codes(qk, rot, R)  # (R, B, H, L)
        half = FACTOR // 2
        proj = torch.matmul(qk[:, :, :current_policy().hash_row_block], rot).reshape(-1, nf * R * half)  # (B*H*L, F*R*half)
        got_codes = kernels.lsh_codes(proj, nf, R, half, lib=lib).view(R, B, H, L)
        assert torch.equal(got_codes, want_codes)
        ref = lsh_layout(qk, real, bits, rot, R, C, causal)
        unsorted = torch.empty_like(ref.buckets).scatter_(-1, ref.perm.long(), ref.buckets)  # (R, G, L)
        perm, srt, uu = kernels.lsh_sort(unsorted, (1 << bits).repeat_interleave(H), C, causal, lib=lib)
        assert torch.equal(perm.long(), ref.perm.long()) and torch.equal(srt, ref.buckets)
        assert torch.equal(uu, ref.u)
    monkeypatch.delenv("SEQFORMER_KERNEL")


def _cpu_has(feature: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and feature in line.split() for line in f)
    except OSError:
        return False


X86 = platform.machine() in ("x86_64", "AMD64")
BUILDS = {  # name -> (-march value, -D defines, why it cannot run here or None)
    "native": ("native", (), None),
    "x86-64 baseline": ("x86-64", (), None if X86 else "not an x86-64 machine"),
    "haswell (AVX2, no AVX-512)": ("haswell", (), None if X86 and _cpu_has("avx2") else "this CPU has no AVX2"),
    "native, pre-GCC-12 branch": ("native", ("SEQFORMER_NO_SHUFFLEVECTOR",), None),
}


@pytest.fixture(scope="module")
def kernel_builds(session_cache) -> dict:
    """Each runnable build of BUILDS as a separate library (or the exception its build raised),
    compiled in parallel (about 5 s each on one core)."""
    from concurrent.futures import ThreadPoolExecutor

    from reformer_seq.model.attention import kernel as kernels

    if kernels.find_compiler() is None:
        pytest.skip(f"no C compiler: {kernels.INSTALL_C}")

    def build(name):
        march, defines, _ = BUILDS[name]
        flags = [f"-march={march}" if f == "-march=native" else f for f in kernels.FLAGS]
        try:
            return kernels.load_library(flags=flags, defines=defines)
        except Exception as e:  # noqa: BLE001 - reported by the test of that build
            return e

    names = [n for n, (_, _, why_not) in BUILDS.items() if why_not is None]
    with pytest.MonkeyPatch.context() as mp, ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        mp.setenv("SEQFORMER_CACHE_DIR", str(session_cache))  # (the autouse fixture is per test)
        return dict(zip(names, pool.map(build, names)))


@pytest.mark.slow
@pytest.mark.parametrize("build", list(BUILDS))
def test_kernel_builds_for_each_instruction_set_match_the_reference(build, kernel_builds, monkeypatch):
    """The kernel built with the baseline instruction set, with AVX2 only, for this CPU, and with
    the guard that replaces __builtin_shufflevector (GCC < 12) forced, each gives the reference's
    results. Each build is a separate library; the process-wide one is untouched."""
    from reformer_seq.model.attention import kernel as kernels

    if BUILDS[build][2]:
        pytest.skip(BUILDS[build][2])
    before = kernels.library()  # the process-wide library (or None)
    lib = kernel_builds[build]
    if isinstance(lib, Exception):
        raise lib
    _check_library(lib, monkeypatch)
    assert kernels.library() is before


OTHER_COMPILERS = ["gcc-9", "gcc-10", "gcc-11", "gcc-12", "gcc-13", "gcc-14", "clang"]


@pytest.mark.slow
def test_kernel_builds_with_every_installed_compiler(monkeypatch):
    """Every GCC (9 and newer) and clang on the PATH builds the kernel for this CPU (GCC < 12
    through the guard's fallback branch), and each build gives the reference's results."""
    import shutil

    from reformer_seq.model.attention import kernel as kernels

    default = kernels.find_compiler()
    seen = {os.path.realpath(shutil.which(default))} if default and shutil.which(default) else set()
    found = [cc for cc in OTHER_COMPILERS if shutil.which(cc) and os.path.realpath(shutil.which(cc)) not in seen]
    if not found:
        pytest.skip(f"no compiler besides {default} among {', '.join(OTHER_COMPILERS)}")
    for cc in found:
        seen.add(os.path.realpath(shutil.which(cc)))
        _check_library(kernels.load_library(compiler=cc), monkeypatch)
