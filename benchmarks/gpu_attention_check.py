#!/usr/bin/env python
"""The GPU path's attention on the device (issue 23): correctness, compile time, layer speed.

Stage ``correctness``: the fused backend (compiled FlexAttention on CUDA, float32) against the
reference path (``SEQFORMER_KERNEL=torch``, float64) on the same device: outputs and gradients of
LSH (4 rounds, padding, causal and bidirectional) with 128-, 32- and 16-wide blocks and narrow
and full-width index lists, local attention and copy attention (D = 48). Pass: out <= 1e-5,
grads <= 1e-4 (max abs), else debug on the CPU with the eager path (tests/model/test_flex_attention.py).

Stage ``layer``: one LSH layer forward + backward (4 heads of 16, 4 rounds, bucket 16) at the
given lengths: the reference path under the CPU and the GPU policy, and the fused backend; the
first call (compile) and the median of 3 warm calls, peak memory; dynamo's graph and recompile
counters at the end.

Every record is a JSON line in ``--out`` (rewritten, temp file + rename, after each record), so a
time-out still returns what ran. On a CPU (a dry run) set ``SEQFORMER_KERNEL=gpu``: the fused
backend runs eagerly there.

    python benchmarks/gpu_attention_check.py correctness --device cuda --out results/gpu/correct.jsonl
    python benchmarks/gpu_attention_check.py layer --device cuda --lengths 64K,1M --out results/gpu/layer.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reformer_seq.model.attention import flex  # noqa: E402
from reformer_seq.model.attention.chunked import chunked_attention  # noqa: E402
from reformer_seq.model.attention.local import local_layout  # noqa: E402
from reformer_seq.model.attention.lsh import hash_rotations, lsh_layout, n_hash_factors  # noqa: E402
from reformer_seq.runtime.policy import ExecutionPolicy, use_policy  # noqa: E402

RECORDS: list[dict] = []


def emit(out: Path, rec: dict) -> None:
    RECORDS.append(rec)
    print(json.dumps(rec), flush=True)
    tmp = out.with_suffix(out.suffix + ".part")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    tmp.replace(out)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _on(path: str, fn):
    previous = os.environ.get("SEQFORMER_KERNEL")
    os.environ["SEQFORMER_KERNEL"] = path
    try:
        return fn()
    finally:
        if previous is None:
            os.environ.pop("SEQFORMER_KERNEL", None)
        else:
            os.environ["SEQFORMER_KERNEL"] = previous


def _fused_path() -> str:
    """The env value that selects the fused backend: ``auto`` on CUDA, ``gpu`` for a CPU dry run."""
    return "gpu" if os.environ.get("SEQFORMER_KERNEL", "").lower() == "gpu" else "auto"


def lsh_case(device, L, causal, B=2, H=4, D=16, C=16, R=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(B, H, L, D, generator=g)
    real = torch.ones(B, L, dtype=torch.bool)
    real[-1, L - 37:] = False
    bits = torch.full((B,), max(1, round(math.log2(L / C))))
    rot = hash_rotations(H, D, R, n_hash_factors(bits), device=torch.device("cpu"), generator=g)
    qk, real, bits, rot = qk.to(device), real.to(device), bits.to(device), rot.to(device)
    lay = lsh_layout(qk, real, bits, rot, R, C, causal)
    v = torch.randn(B, L, H, D, generator=g).to(device)
    return qk.transpose(1, 2).contiguous(), None, v, lay


def local_case(device, L, causal, B=2, H=4, D=16, W=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    real = torch.ones(B, L, dtype=torch.bool)
    real[-1, L - 2 * W:] = False
    q, k, v = (torch.randn(B, L, H, D, generator=g).to(device) for _ in range(3))
    return q, k, v, local_layout(real.to(device), H, W, causal)


def _grads(path, q, k, v, lay, dout, dtype, **kw):
    def run():
        leaves = [None if t is None else t.to(dtype).clone().requires_grad_(True) for t in (q, k, v)]
        out = chunked_attention(*leaves, lay, **kw)
        (out * dout.to(dtype)).sum().backward()
        _sync(q.device)
        return [out.detach()] + [None if t is None else t.grad for t in leaves]
    return _on(path, run)


def _err(a, b):
    return None if a is None else float((a.double() - b.double()).abs().max())


def correctness(args) -> None:
    out = Path(args.out)
    dev = torch.device(args.device)
    L = args.length
    cases = []
    for causal in (True, False):
        for blk in (128, 32, 16):
            for full in ((False, True) if blk == 128 else (False,)):
                cases.append(("lsh", causal, blk, full))
    cases += [("local", True, 128, False), ("local", False, 128, False), ("local", True, 32, False)]
    for kind, causal, blk, full in cases:
        t0 = time.perf_counter()
        rec = {"stage": "correctness", "kind": kind, "causal": causal, "block": blk, "full_width": full, "L": L}
        try:
            q, k, v, lay = (lsh_case if kind == "lsh" else local_case)(dev, L, causal)
            dout = torch.randn(v.shape, generator=torch.Generator().manual_seed(9)).to(dev)
            ref = _grads("torch", q, k, v, lay, dout, torch.float64)
            flex.FULL_WIDTH_LISTS = full
            with use_policy(flex_block=blk):
                got = _grads(_fused_path(), q, k, v, lay, dout, torch.float32)
            errs = {n: _err(b, a) for n, a, b in zip(("out", "dq", "dk", "dv"), ref, got)}
            ok = errs["out"] <= 1e-5 and all(e is None or e <= 1e-4 for e in list(errs.values())[1:])
            rec.update(errs=errs, ok=bool(ok))
        except Exception as e:  # noqa: BLE001 - recorded, the next case runs
            rec.update(ok=False, error=f"{type(e).__name__}: {str(e)[:400]}")
        finally:
            flex.FULL_WIDTH_LISTS = False
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        emit(out, rec)
    # copy attention: D = 48, own keys, scale 1
    rec = {"stage": "correctness", "kind": "copy", "L": L}
    t0 = time.perf_counter()
    try:
        from reformer_seq.model.attention.copy_attention import CopyAttention

        torch.manual_seed(0)
        layer = CopyAttention(k=12, n_hashes=4).to(dev).eval()
        g = torch.Generator().manual_seed(5)
        tokens = torch.randint(4, 8, (2, L), generator=g)
        tokens[:, L // 2:L // 2 + 60] = tokens[:, 20:80]
        tokens = tokens.to(dev)
        values = torch.randn(2, L, 2, 48, generator=g).to(dev)
        res = {}
        for path, dtype in (("torch", torch.float64), (_fused_path(), torch.float32)):
            def run(dtype=dtype):
                vals = values.to(dtype).clone().requires_grad_(True)
                o, seen = layer.to(dtype).attend(vals, tokens)
                o.sum().backward()
                return o.detach(), vals.grad, seen
            res[path] = _on(path, run)
        a, b = res["torch"], res[_fused_path()]
        rec.update(errs={"out": _err(b[0], a[0]), "dv": _err(b[1], a[1])}, seen_equal=bool(torch.equal(a[2], b[2])))
        rec["ok"] = rec["errs"]["out"] <= 1e-5 and rec["errs"]["dv"] <= 1e-4 and rec["seen_equal"]
    except Exception as e:  # noqa: BLE001
        rec.update(ok=False, error=f"{type(e).__name__}: {str(e)[:400]}")
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    emit(out, rec)


def _layer_step(q, v, lay):
    qq, vv = q.clone().requires_grad_(True), v.clone().requires_grad_(True)
    out = chunked_attention(qq, None, vv, lay)
    out.sum().backward()
    _sync(q.device)


def layer(args) -> None:
    out = Path(args.out)
    dev = torch.device(args.device)
    budget_end = time.perf_counter() + args.budget
    for L in [int(float(s.upper().rstrip("KM")) * (1 << 20 if s.upper().endswith("M") else 1024))
              for s in args.lengths.split(",")]:
        q, _, v, lay = lsh_case(dev, L, True, B=1)
        for name, path, policy in (("fused", _fused_path(), None), ("reference, GPU policy", "torch", None),
                                   ("reference, CPU policy", "torch", ExecutionPolicy())):
            if time.perf_counter() > budget_end:
                emit(out, {"stage": "layer", "L": L, "path": name, "status": "skipped (stage budget)"})
                continue
            rec = {"stage": "layer", "L": L, "path": name}
            try:
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                ctx = use_policy(policy) if policy is not None else use_policy()
                with ctx:
                    t0 = time.perf_counter()
                    _on(path, lambda: _layer_step(q, v, lay))
                    rec["first_call_s"] = round(time.perf_counter() - t0, 4)
                    times = []
                    for _ in range(3):
                        t0 = time.perf_counter()
                        _on(path, lambda: _layer_step(q, v, lay))
                        times.append(time.perf_counter() - t0)
                rec["median_s"] = round(statistics.median(times), 5)
                if dev.type == "cuda":
                    rec["peak_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2 ** 30, 3)
            except Exception as e:  # noqa: BLE001
                rec["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            emit(out, rec)
    try:
        from torch._dynamo.utils import counters

        emit(out, {"stage": "layer", "dynamo": {k: dict(v) for k, v in counters.items() if k in ("stats", "recompiles")}})
    except Exception as e:  # noqa: BLE001
        emit(out, {"stage": "layer", "dynamo": f"unavailable: {e}"})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=("correctness", "layer"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--length", type=int, default=1024, help="correctness: sequence length")
    p.add_argument("--lengths", default="64K,1M", help="layer: comma list (K, M)")
    p.add_argument("--budget", type=float, default=100.0, help="layer: seconds before later runs are skipped")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    emit(Path(a.out), {"stage": a.stage, "torch": torch.__version__, "device": str(a.device),
                       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                       "flex": flex.available()})
    (correctness if a.stage == "correctness" else layer)(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
