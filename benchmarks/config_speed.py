#!/usr/bin/env python
"""Step time of two model configs side by side: one training step (forward + backward, batch 1,
real E. coli tokens) at each length, the configs interleaved step by step in one process, so a
loaded machine slows both alike; the median of ``--repeats`` steps each and their ratio.

Example (the reading-frame levers against the previous default)::

    python benchmarks/config_speed.py --a configs/default.yaml \\
        --b configs/default.yaml --b-set conv_kernel=8 kmer_embedding=0 frame_conv=0 local_rope=false
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reformer_seq import ReformerConfig, ReformerLM  # noqa: E402
from reformer_seq.genome.encoded import load_genome  # noqa: E402


def build(path: str, sets: list[str]) -> ReformerLM:
    model = dict(yaml.safe_load(Path(path).read_text())["model"])
    for kv in sets:
        k, v = kv.split("=", 1)
        model[k] = yaml.safe_load(v)
    torch.manual_seed(0)
    return ReformerLM(ReformerConfig(vocab_size=9, **model)).train()


def step(model: ReformerLM, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    logits = model(x[:, :-1])
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True)
    ap.add_argument("--a-set", nargs="*", default=[])
    ap.add_argument("--b", required=True)
    ap.add_argument("--b-set", nargs="*", default=[])
    ap.add_argument("--lengths", default="4096,65536")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1, help="windows per step (training uses 4 x 4,096)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "config_speed.json"))
    args = ap.parse_args()
    ids = torch.from_numpy(load_genome(ROOT / "data" / "Ecoli_K12_MG1655.fasta.gz")[0].ids[:1 << 20].astype("int64"))
    models = {"a": build(args.a, args.a_set), "b": build(args.b, args.b_set)}
    rows = []
    for L in map(int, args.lengths.split(",")):
        x = torch.stack([ids[i * (L + 1):(i + 1) * (L + 1)] for i in range(args.batch)])  # (batch, L + 1)
        times = {k: [] for k in models}
        for k, m in models.items():  # warm-up
            step(m, x)
        for _ in range(args.repeats):
            for k, m in models.items():
                times[k].append(step(m, x))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"L": L, "batch": args.batch, "a_s": med["a"], "b_s": med["b"], "a_over_b": med["a"] / med["b"]})
        print(f"L={L:>8,} x{args.batch}  a {med['a']:.3f} s  b {med['b']:.3f} s  a/b {med['a'] / med['b']:.3f}", flush=True)
    Path(args.out).write_text(json.dumps({"a": [args.a, args.a_set], "b": [args.b, args.b_set], "rows": rows,
                                          "params": {k: m.num_parameters() for k, m in models.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
