#!/usr/bin/env python
"""How fast ``seqformer score-variants`` runs: variants per second on CPU.

Model: ``configs/default.yaml`` (dim 64, 2 layers local + LSH, max_seq_len 65,536), random
weights (speed does not depend on training), default window (4,096 bases), both strands, batch 8,
``--threads`` torch threads (default 2). Reference: the shipped E. coli genome. Three variant sets,
each written to a VCF and scored end to end by :func:`reformer_seq.tasks.scoring.variants.score_vcf` (genome
cache warmed first; the time includes loading the checkpoint, reading the VCF, writing the TSV;
each set runs ``--repeats`` times, interleaved, and the fastest run is kept, since other jobs on a
shared machine only ever slow a run down):

* ``snv_sparse``: SNVs 5 kb apart, so no two share a window: 2 passes per strand per variant;
* ``indel_sparse``: insertions and deletions of 1-6 bases, 5 kb apart;
* ``snv_dense``: every SNV of a stretch of bases (saturation mutagenesis): the variants of one
  window share its reference pass, about 1 pass per strand per variant.

Beside them, the brute-force baseline: two full-window forward passes per variant and strand,
no shared reference pass (``1 / (4 * seconds per window pass)``), from the fastest of timed
batches of windows.

Examples::

    python benchmarks/variant_speed.py                  # ~3 min on 2 cores
    python benchmarks/variant_speed.py --n 16 --dense 32
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ECOLI = REPO / "data" / "Ecoli_K12_MG1655.fasta.gz"
CHROM = "K-12-MG1655"


def make_checkpoint(folder: Path) -> Path:
    import torch

    from reformer_seq import ReformerLM
    from reformer_seq.config import load_run_config
    from reformer_seq.genome.tokenizers import NucleotideTokenizer

    cfg = load_run_config(REPO / "configs" / "default.yaml").model
    cfg.vocab_size = NucleotideTokenizer().vocab_size
    torch.manual_seed(0)
    return ReformerLM(cfg).save_pretrained(folder, meta={"objective": "causal"})


def variant_sets(seq: str, n: int, dense: int, rng: np.random.Generator) -> dict[str, list[tuple[int, str, str]]]:
    """(0-based pos, ref, alt) per set; sparse ones 5 kb apart from 1 Mb on."""
    starts = [1_000_000 + 5000 * i for i in range(n)]
    snv = [(p, seq[p], rng.choice([b for b in "ACGT" if b != seq[p]])) for p in starts]
    indel = []
    for i, p in enumerate(starts):
        k = int(rng.integers(1, 7))
        if i % 2:
            indel.append((p, seq[p:p + k + 1], seq[p]))  # deletion of k bases
        else:
            indel.append((p, seq[p], seq[p] + "".join(rng.choice(list("ACGT"), k))))  # insertion
    base = 2_000_000
    n_pos = max(1, dense // 3)
    snv_dense = [(p, seq[p], b) for p in range(base, base + n_pos) for b in "ACGT" if b != seq[p]]
    return {"snv_sparse": snv, "indel_sparse": indel, "snv_dense": snv_dense}


def write_vcf(path: Path, variants: list[tuple[int, str, str]]) -> None:
    rows = [f"{CHROM}\t{p + 1}\t.\t{r}\t{a}\t.\tPASS\t." for p, r, a in variants]
    path.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" + "\n".join(rows) + "\n")


def window_pass_seconds(ckpt: Path, records, window: int, batch: int, repeats: int = 3) -> float:
    """Seconds per window in a batch of ``batch`` equal windows: the fastest of ``repeats`` passes."""
    from reformer_seq.tasks.pretrained import load_pretrained
    from reformer_seq.tasks.evaluation.likelihood import ModelScorer

    model, _, _ = load_pretrained(ckpt)
    scorer = ModelScorer(model, device="cpu")
    ids = np.asarray(records[0].ids[:window * batch]).astype(np.int64).reshape(batch, window)
    scorer(ids)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        scorer(ids)
        best = min(best, time.perf_counter() - t)
    return best / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=48, help="variants in each sparse set")
    ap.add_argument("--dense", type=int, default=192, help="variants in the dense set (3 per position)")
    ap.add_argument("--window", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each set (interleaved); the fastest is kept")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "variant_speed.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from reformer_seq.genome.encoded import load_genome
    from reformer_seq.genome.fasta import read_records
    from reformer_seq.tasks.scoring.variants import score_vcf

    rng = np.random.default_rng(0)
    seq = next(read_records(ECOLI)).sequence.upper()
    results: dict[str, Any] = {"config": "configs/default.yaml (random weights)", "window": args.window,
                               "batch_size": args.batch_size, "threads": args.threads, "strand": "both",
                               "cpu": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
                               "sets": {}}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        ckpt = make_checkpoint(tmp / "ckpt")
        records = load_genome(ECOLI)  # warm the genome cache
        per_pass = window_pass_seconds(ckpt, records, args.window, args.batch_size, 2 * args.repeats)
        results["seconds_per_window_pass"] = round(per_pass, 4)
        results["brute_force_variants_per_s"] = round(1 / (4 * per_pass), 2)
        sets = variant_sets(seq, args.n, args.dense, rng)
        times: dict[str, list[float]] = {name: [] for name in sets}
        for _ in range(args.repeats):  # interleaved, so a burst of load from other jobs hits every set alike
            for name, variants in sets.items():
                vcf = tmp / f"{name}.vcf"
                write_vcf(vcf, variants)
                s = score_vcf(vcf, ECOLI, ckpt, tmp / f"{name}.tsv", window=args.window,
                              batch_size=args.batch_size, device="cpu", progress=False)
                times[name].append(s.seconds)
                results["sets"][name] = {"variants": s.n_alleles, "scored": s.n_scored}
        for name, ts in times.items():
            best = min(ts)
            results["sets"][name].update(seconds=round(best, 1), seconds_all=[round(t, 1) for t in ts],
                                         variants_per_s=round(results["sets"][name]["variants"] / best, 2))
    print(f"| set | variants | seconds | variants/s |\n|---|---:|---:|---:|")
    for name, r in results["sets"].items():
        print(f"| {name} | {r['variants']} | {r['seconds']} | {r['variants_per_s']} |")
    print(f"| brute force (2 full windows per variant and strand) | | | {results['brute_force_variants_per_s']} |")
    print(f"window pass: {results['seconds_per_window_pass']} s ({args.threads} threads, batch {args.batch_size}); "
          f"load average at start {results['load_average'][0]:.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
