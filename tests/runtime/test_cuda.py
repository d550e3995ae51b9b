"""The model on a CUDA GPU (issue 7).

* The 4 GB promise: forward+backward at 65,536 tokens with the small config, and the data
  pipeline's batches for that length, within 4 GiB of CUDA memory.
* CUDA equals CPU: the same checkpoint gives the same logits and gradients on both devices (on
  CUDA the PyTorch reference attention runs instead of the compiled CPU kernel, and eval-mode
  hash rotations must not depend on the device).
* Reversible backward equals plain autograd on CUDA, with dropout and random rotations.

Needs a CUDA GPU; on machines without one these tests are skipped (CPU memory is covered by
benchmarks/, CPU equivalences by tests/model/test_lm.py and test_attention.py)."""
from __future__ import annotations

import pytest
import torch

from helpers import ECOLI, REPO, TINY, model_config, train_ranks
from reformer_seq import ReformerConfig, ReformerLM
from reformer_seq.genome.encoded import load_genome
from reformer_seq.genome.tokenizers import NucleotideTokenizer
from reformer_seq.genome.batches import CausalCollator
from reformer_seq.genome.windows import GenomeWindowDataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GIB = 1 << 30
CUDA = torch.device("cuda")


def test_64k_tokens_train_within_4_gib_on_gpu(tmp_path):
    torch.cuda.reset_peak_memory_stats()
    dev = torch.device("cuda")
    cfg = ReformerConfig(vocab_size=9, dim=64, depth=2, heads=4, bucket_size=16, n_hashes=4, causal=True,
                         max_seq_len=65536, reversible=True, attention="lsh", dropout=0.0)
    model = ReformerLM(cfg).to(dev)
    tok = NucleotideTokenizer()
    ds = GenomeWindowDataset(load_genome(ECOLI, tok, cache_dir=tmp_path), 65536, tok)
    batch = CausalCollator(tok)([ds[0]])  # the data pipeline's batch for this length
    x, labels = batch["input_ids"].to(dev), batch["labels"].to(dev)
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, 9), labels.view(-1), ignore_index=-100)
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    assert torch.isfinite(loss)
    assert peak < 4 * GIB, f"peak {peak / GIB:.2f} GiB"


def _small(**kw) -> ReformerConfig:
    """helpers.model_config, width 32, 3 layers (local, LSH, full), 3 hash rounds, a convolution."""
    return model_config(**{**dict(dim=32, depth=3, n_hashes=3, causal=True, max_seq_len=1024, reversible=True,
                                  attn_layers=["local", "lsh", "full"], dropout=0.0, ff_chunk_size=64,
                                  conv_kernel=3), **kw})


def _logits_and_grads(model: ReformerLM, x: torch.Tensor, seed: int):
    """Logits and every parameter's gradient of a fixed random projection of the logits."""
    model.zero_grad()
    torch.manual_seed(seed)
    out = model(x)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(99)).to(out.device, out.dtype)
    (out * w).sum().backward()
    return out.detach().cpu(), {n: p.grad.detach().cpu() for n, p in model.named_parameters()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def compare_devices(dev: torch.device, dtype: torch.dtype, tol: float) -> None:
    """The same weights in eval mode on ``dev`` and on the CPU: logits and gradients agree."""
    torch.manual_seed(0)
    cpu_model = ReformerLM(_small()).eval().to(dtype)
    dev_model = ReformerLM(_small()).eval()
    dev_model.load_state_dict(cpu_model.state_dict())
    dev_model.to(dev, dtype)
    x = torch.randint(0, 9, (2, 300), generator=torch.Generator().manual_seed(3))
    out_c, g_c = _logits_and_grads(cpu_model, x, seed=1)
    out_d, g_d = _logits_and_grads(dev_model, x.to(dev), seed=1)
    assert _rel(out_d, out_c) < tol, _rel(out_d, out_c)
    for name in g_c:
        assert _rel(g_d[name], g_c[name]) < tol, (name, _rel(g_d[name], g_c[name]))


def compare_reversible(dev: torch.device, dtype: torch.dtype, tol: float) -> None:
    """Reversible backward (inputs rebuilt, RNG replayed) = plain autograd on ``dev``, training
    mode with dropout and random rotations."""
    torch.manual_seed(0)
    rev = ReformerLM(_small(dropout=0.1)).train().to(dev, dtype)
    plain = ReformerLM(_small(dropout=0.1, reversible=False)).train().to(dev, dtype)
    plain.load_state_dict(rev.state_dict())
    x = torch.randint(0, 9, (2, 300), generator=torch.Generator().manual_seed(4)).to(dev)
    out_r, g_r = _logits_and_grads(rev, x, seed=5)
    out_p, g_p = _logits_and_grads(plain, x, seed=5)
    assert _rel(out_r, out_p) < tol
    for name in g_p:
        assert _rel(g_r[name], g_p[name]) < tol, name
    out_other, _ = _logits_and_grads(rev, x, seed=6)  # dropout and hashing really are random
    assert not torch.allclose(out_other, out_r)


# float64 shows the computations are the same; float32 (TF32 off) that rounding stays small. The
# gradient of the shared-QK projection is the most rounding-sensitive (unit-normalised keys): in
# float32 it differs by up to ~2e-4 relative even between two CPU runs of reversible vs plain.
TOLERANCES = [(torch.float64, 1e-9), (torch.float32, 2e-3)]


@pytest.mark.parametrize("dtype,tol", TOLERANCES)
def test_cuda_equals_cpu_for_the_same_checkpoint(dtype, tol):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    compare_devices(CUDA, dtype, tol)


@pytest.mark.parametrize("dtype,tol", TOLERANCES)
def test_reversible_gradients_equal_plain_autograd_on_cuda(dtype, tol):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    compare_reversible(CUDA, dtype, tol)


def test_bf16_autocast_on_cuda_is_close_to_fp32():
    torch.manual_seed(0)
    model = ReformerLM(_small()).eval().to(CUDA)
    x = torch.randint(0, 9, (1, 512), generator=torch.Generator().manual_seed(8)).to(CUDA)
    with torch.no_grad():
        ref = model(x).float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(x).float()
    assert torch.isfinite(low).all()
    cos = torch.nn.functional.cosine_similarity(low.flatten(), ref.flatten(), dim=0)
    assert cos > 0.99, float(cos)


NCCL_SCRIPT = """
import os, torch
from reformer_seq.tasks.training.distributed import Dist
from reformer_seq.tasks.training.optim import fit_horizon
from reformer_seq.config import load_run_config
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("PORT", "29533"))
torch.cuda.set_device(0)
torch.distributed.init_process_group("nccl", world_size=1, rank=0)
dist = Dist.__new__(Dist)  # a one-rank NCCL group, bookkept as two ranks: every collective runs
dist.world, dist.rank, dist.local_rank, dist.started_here, dist.device = 2, 0, 0, True, torch.device("cuda", 0)
model = torch.nn.Linear(3, 2).cuda()
model(torch.randn(4, 3, device="cuda")).sum().backward()
assert dist.agree(True) and not dist.agree(False)
assert dist.all_reduce_(dist.tensor([1.0, 2.0]), average=False).tolist() == [1.0, 2.0]
tcfg = load_run_config(os.environ["TINY"], {"train": {"max_time": 60.0}}).train
assert fit_horizon(10, 5.0, (2, 1.0), tcfg, dist) >= 11
states = dist.gather(torch.get_rng_state())
assert len(states) == 1 and states[0].device.type == "cpu" and torch.equal(states[0], torch.get_rng_state())
dist.gather(torch.cuda.get_rng_state(0))
dist.average_gradients(model)
dist.broadcast_parameters(model)
assert dist.check_same_parameters(model) == 0.0
dist.close(finished=True)
print("NCCL-OK")
"""


def test_collectives_work_with_nccl():
    """The training loop's collectives (stop agreement, step horizon, loss sums, RNG-state gather,
    gradient averaging, end-of-run parameter check) on a real NCCL group: NCCL takes only CUDA
    tensors, so any CPU tensor among them fails here."""
    import os
    import subprocess
    import sys

    if not torch.distributed.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    res = subprocess.run([sys.executable, "-c", NCCL_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TINY": str(TINY)})
    assert res.returncode == 0 and "NCCL-OK" in res.stdout, res.stdout + res.stderr


def test_two_gpus_train_one_model(tmp_path):
    """Where two GPUs exist: two NCCL ranks (one per GPU) train one model through torchrun."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs (NCCL runs one rank per GPU)")
    train_ranks(tmp_path, 2, "cuda")
