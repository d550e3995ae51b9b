"""The GPU path on a CPU (``SEQFORMER_KERNEL=gpu``): its execution policy, a whole training step
equal to the reference path's, and its launch budget (ATen ops and host syncs per step, the CPU
guard against the launch-bound GPU step of issue 23)."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from helpers import PHIX, REPO, TINY, invoke
from reformer_seq import ExecutionPolicy, ReformerLM, current_policy, use_policy
from reformer_seq.model.attention import flex, kernel
from reformer_seq.runtime.policy import GPU_DEFAULTS, gpu_path


def _op_count():
    spec = importlib.util.spec_from_file_location("op_count", REPO / "benchmarks" / "op_count.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_policy_is_chosen_by_device(monkeypatch):
    monkeypatch.delenv("SEQFORMER_KERNEL", raising=False)
    assert current_policy() == current_policy("cpu") == ExecutionPolicy()  # CPU defaults unchanged
    gpu = current_policy(torch.device("cuda", 0))
    assert all(getattr(gpu, k) == v for k, v in GPU_DEFAULTS.items())
    with use_policy(hash_row_block=7, ff_chunk_short=9):  # what a user sets holds on both paths
        assert current_policy("cuda").hash_row_block == 7 and current_policy("cuda").ff_chunk_short == 9
        assert current_policy("cuda").head_group_elems == GPU_DEFAULTS["head_group_elems"]
    monkeypatch.setenv("SEQFORMER_KERNEL", "gpu")  # the CUDA code path on any device
    assert gpu_path("cpu") and current_policy() == gpu
    assert not kernel.usable(torch.zeros(1))  # the C kernel is the CPU path only


def _step(model, tokens):
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
                                             tokens[:, 1:].reshape(-1))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.slow
@pytest.mark.skipif(not flex.available(), reason="this torch has no FlexAttention with AuxRequest")
@pytest.mark.parametrize("config", ["default", "benchmark"])
def test_reversible_training_step_equals_the_reference(monkeypatch, config):
    """One training step (reversible; default config: local + LSH + copy mixture and the reading-frame
    features) in float64 on the GPU path and on the reference path: the same loss and gradients."""
    oc = _op_count()
    L = 320  # not a multiple of the 128-wide blocks
    cfg = oc.model_config(config, L)
    assert cfg.reversible
    torch.manual_seed(0)
    model = ReformerLM(cfg).double().train()
    tokens = torch.randint(4, 8, (2, L), generator=torch.Generator().manual_seed(1))
    res = {}
    for path in ("torch", "gpu"):
        monkeypatch.setenv("SEQFORMER_KERNEL", path)
        torch.manual_seed(7)  # the same hash rotations on both paths
        res[path] = _step(model, tokens)
    (l_ref, g_ref), (l_gpu, g_gpu) = res["torch"], res["gpu"]
    torch.testing.assert_close(l_gpu, l_ref, rtol=1e-12, atol=0)
    assert g_ref.keys() == g_gpu.keys() and len(g_ref) > 10
    for name in g_ref:
        scale = g_ref[name].abs().max().clamp(min=1e-30)
        assert (g_gpu[name] - g_ref[name]).abs().max() / scale < 1e-9, name


# The budget of one training step on the GPU path (batch 1; flex calls counted as one launch each,
# see benchmarks/op_count.py). The target is 1,000 ATen ops: met by the benchmark config
# (823 at 1K); the default config, whose copy mixture and reading-frame features add ~300 ops
# outside attention, counts 1,076 (1,114 before recent_hits and kmer_index were vectorised; the
# reference path before issue 23: 2,804 ops and 18 host syncs). Issue 24's persistence heads
# (copy_persist, on in the default) add ~140 elementwise ops (1,215 at 1K, 1,240 before its two
# strands were computed together), no host sync.
BUDGET = {"default": 1230, "benchmark": 1000}


@pytest.mark.skipif(not flex.available(), reason="this torch has no FlexAttention with AuxRequest")
@pytest.mark.parametrize("config", ["default", "benchmark"])
def test_training_step_launch_budget(config):
    oc = _op_count()
    rows = [oc.count_step(config, L, "gpu") for L in (1024, 2048)]
    for r in rows:
        assert r["syncs"] <= 1, r["sync_ops"]  # none inside a step (0 measured)
        assert r["ops"] <= BUDGET[config], (r["L"], r["ops"], r["top_ops"])
        assert r["fused_calls"] > 0  # the fused backend ran
    assert abs(rows[1]["ops"] - rows[0]["ops"]) <= 0.05 * rows[0]["ops"]  # independent of the length


def test_token_range_is_checked_without_a_host_sync(monkeypatch):
    """On the GPU path the token range check is a device-side assertion (no .item()): still an
    error that says what is wrong."""
    from reformer_seq import ReformerConfig
    from reformer_seq.runtime.dispatch_count import OpCounter

    model = ReformerLM(ReformerConfig(vocab_size=16, dim=16, depth=1, heads=2, max_seq_len=64, attention="lsh",
                                      bucket_size=8, n_hashes=2)).eval()
    bad = torch.full((1, 32), 20)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 16\)"):
        model(bad)
    monkeypatch.setenv("SEQFORMER_KERNEL", "gpu")
    with pytest.raises(RuntimeError, match=r"token ids must be in \[0, 16\)"):
        model(bad)
    c = OpCounter()
    with torch.no_grad(), c, _op_count().fused_stand_in(c):
        model(torch.randint(4, 8, (1, 32)))
    assert c.syncs == 0, c.sync_ops


@pytest.mark.slow
@pytest.mark.skipif(not flex.available(), reason="this torch has no FlexAttention with AuxRequest")
def test_pretrain_on_the_gpu_path_in_bf16(tmp_path, monkeypatch, session_cache):
    """``seqformer pretrain`` end to end on the code path ``--device cuda`` takes (eager on this
    CPU), in bf16: it trains, finite, and reports the whole run's tokens per second."""
    monkeypatch.setenv("SEQFORMER_CACHE_DIR", str(session_cache))
    monkeypatch.setenv("SEQFORMER_KERNEL", "gpu")
    run = tmp_path / "run"
    res = invoke("pretrain", PHIX, "--config", TINY, "--max-steps", 3, "--precision", "bf16", "--out", run, "--quiet")
    assert res.exit_code == 0, res.output
    assert "tokens/s" in res.output
    import json

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if r.get("kind") == "train"]
    assert train and all(math.isfinite(r["bits_per_base"]) for r in train)
