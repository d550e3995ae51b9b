#!/usr/bin/env python
"""ATen ops and host syncs of one training step: the reference path against the GPU path.

A GPU runs seqformer launch-bound (``shared/design/gpu_attention.md``: H200 step times fit
``0.021 s + 11.4 us x ops``), so the op count of a step predicts its GPU time, and it can be
measured on a CPU: the GPU path's op sequence does not depend on the device
(``SEQFORMER_KERNEL=gpu``). One step = forward, cross-entropy, backward, batch 1, random
tokens, the second step of the process (the first fills per-process caches), counted with :class:`reformer_seq.runtime.dispatch_count.OpCounter`.

Paths:

* ``reference``: ``SEQFORMER_KERNEL=torch``, what CUDA ran before issue 23 (the PyTorch
  reference of chunked attention, the CPU execution policy).
* ``gpu``: ``SEQFORMER_KERNEL=gpu``, the GPU path (FlexAttention backend, GPU policy). Each
  fused attention call is counted as one launch (the compiled kernel); its eager CPU stand-in's
  own ops are not counted (:func:`fused_stand_in`), and the stand-in's backward issues about
  as many ops as the compiled backward's two kernels.

Configs: ``default`` (configs/default.yaml's model: local + LSH, copy attention with the
mixture, the reading-frame features) and ``benchmark`` (benchmarks/speed_memory.py's
build_seqformer: 2 LSH layers).

    python benchmarks/op_count.py --lengths 1K,2K,4K            # table + results/op_count.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reformer_seq import ReformerConfig, ReformerLM  # noqa: E402
from reformer_seq.runtime.dispatch_count import OpCounter  # noqa: E402


def model_config(name: str, L: int) -> ReformerConfig:
    """``default``: configs/default.yaml's model; ``benchmark``: speed_memory.py's."""
    if name == "default":
        from reformer_seq.config import load_run_config

        cfg = load_run_config(REPO / "configs" / "default.yaml").model
        cfg.max_seq_len = max(cfg.max_seq_len, L)
        return cfg
    return ReformerConfig(vocab_size=16, dim=64, depth=2, heads=4, bucket_size=16, n_hashes=4, causal=True,
                          max_seq_len=max(1024, 1 << (L - 1).bit_length()), reversible=True, attention="lsh",
                          dropout=0.0)


@contextlib.contextmanager
def fused_stand_in(counter: OpCounter) -> Iterator[None]:
    """Replace the fused attention call by a differentiable stand-in of the right shapes that
    counts as one launch (the compiled kernel), its own ops paused (for op counts of the GPU path
    without eager FlexAttention's dense scores). Results are meaningless inside."""
    from reformer_seq.model.attention import flex

    original = flex._flex

    def stand_in(q, k, v, score_mod, block_mask, scale, blk):
        with counter.paused():
            out = v * 1.0 + (q * k).sum() * 0.0  # (Rg, G, L, D), differentiable in q, k, v
            lse = q[..., 0] * 0.0  # (Rg, G, L)
        counter.add("fused_attention")
        return out, lse

    flex._flex = stand_in
    try:
        yield
    finally:
        flex._flex = original


def count_step(config: str, L: int, path: str, seed: int = 0) -> dict:
    """Ops, kernel launches and host syncs of one training step of ``config`` at length ``L``
    on ``path`` (``reference`` or ``gpu``)."""
    previous = os.environ.get("SEQFORMER_KERNEL")
    os.environ["SEQFORMER_KERNEL"] = "torch" if path == "reference" else "gpu"
    try:
        torch.manual_seed(seed)
        cfg = model_config(config, L)
        model = ReformerLM(cfg).train()
        tokens = torch.randint(4, 8, (1, L))
        for warm in (True, False):  # the second step is counted (per-process caches filled)
            counter = OpCounter()
            with counter, (fused_stand_in(counter) if path == "gpu" else contextlib.nullcontext()):
                logits = model(tokens)
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                         tokens[:, 1:].reshape(-1))
                loss.backward()
            model.zero_grad(set_to_none=True)
    finally:
        if previous is None:
            os.environ.pop("SEQFORMER_KERNEL", None)
        else:
            os.environ["SEQFORMER_KERNEL"] = previous
    return {"config": config, "L": L, "path": path, "ops": counter.ops, "launches": counter.launches,
            "syncs": counter.syncs, "sync_ops": dict(counter.sync_ops),
            "fused_calls": counter.by_op.get("fused_attention", 0),
            "top_ops": dict(counter.by_op.most_common(8))}


def _parse_lengths(text: str) -> list[int]:
    out = []
    for s in text.split(","):
        s = s.strip().upper()
        mult = 1024 if s.endswith("K") else 1
        out.append(int(float(s.rstrip("K")) * mult))
    return out


def run(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="1K,2K,4K")
    ap.add_argument("--configs", default="default,benchmark")
    ap.add_argument("--paths", default="reference,gpu")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "op_count.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print(f"{'config':<10} {'L':>6} {'path':<10} {'ATen ops':>9} {'launches':>9} {'syncs':>6}  sync ops")
    for config in a.configs.split(","):
        for L in _parse_lengths(a.lengths):
            for path in a.paths.split(","):
                r = count_step(config, L, path)
                rows.append(r)
                print(f"{config:<10} {L:>6} {path:<10} {r['ops']:>9,} {r['launches']:>9,} {r['syncs']:>6}  "
                      f"{r['sync_ops']}", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.part")
    tmp.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
