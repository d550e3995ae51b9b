#!/usr/bin/env python
"""How fast ``seqformer embed`` runs, and how much memory a 1M-base single-window record takes.

Two measurements, each in a fresh child process (so one's memory does not count in the other's
peak, and the peak includes the interpreter and torch, as a real ``seqformer embed`` would):

* ``ecoli``: throughput (bases per second) of :func:`reformer_seq.tasks.embedding.embed_fasta` on the
  shipped E. coli K-12 MG1655 genome (4.6 Mb, one record) with the model of
  ``configs/default.yaml`` (dim 64, 2 layers: local + LSH, 4 heads, bucket size 16, 4 hash
  rounds, causal conv, max_seq_len 65,536), random weights, pooled (``--pool mean``), default
  window (65,536) and overlap (8,192), fp32. The genome cache is warmed first, so the time is the
  embedding (windows, forward passes, pooling, writing the .npz), not FASTA parsing.
* ``1m``: one 1,048,576-base record (the first 1,048,576 bases of E. coli K-12) embedded in a
  single window with the model of ``configs/long.yaml`` (max_seq_len 1,048,576), pooled; peak resident set
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of the child, and its resident set before the
  forward pass (interpreter, torch, model, tokens) for reference.

The model's forward pass dominates; rerun this script after kernel changes. Prints a table and writes JSON (``--out``).

Examples::

    python benchmarks/embed_speed.py                      # both, ~10-15 min on 2 CPU cores
    python benchmarks/embed_speed.py --only 1m
    python benchmarks/embed_speed.py --only ecoli --limit 1000000 --threads 1   # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ECOLI = REPO / "data" / "Ecoli_K12_MG1655.fasta.gz"
LONG_LEN = 1_048_576


def model_config(name: str) -> dict[str, Any]:
    """The model section of ``configs/<name>.yaml`` as ReformerConfig keyword arguments."""
    from dataclasses import asdict

    from reformer_seq.config import load_run_config
    from reformer_seq.genome.tokenizers import NucleotideTokenizer

    cfg = asdict(load_run_config(REPO / "configs" / f"{name}.yaml").model)
    cfg["vocab_size"] = NucleotideTokenizer().vocab_size  # as `seqformer pretrain` sets it
    return cfg


def rss_bytes() -> int:
    """Peak resident set of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return rss_bytes()


def make_checkpoint(folder: Path, **cfg: Any) -> Path:
    import torch

    from reformer_seq import ReformerConfig, ReformerLM

    torch.manual_seed(0)
    ReformerLM(ReformerConfig(**cfg)).save_pretrained(folder)
    return folder


def child(which: str, threads: int, device: str, precision: str, limit: int | None) -> dict[str, Any]:
    """One measurement, run inside the child process."""
    import torch

    from reformer_seq import set_process_tuning
    from reformer_seq.tasks.embedding import embed_fasta
    from reformer_seq.genome.encoded import load_genome
    from reformer_seq.genome.fasta import read_records

    set_process_tuning(True)  # as the seqformer commands do (reformer_seq/runtime/tuning.py)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        os.environ["SEQFORMER_CACHE_DIR"] = str(tmp / "cache")
        if which == "ecoli":
            cfg = model_config("default")
            fasta = ECOLI
        else:
            cfg = model_config("long")
            limit = LONG_LEN
        if limit:  # the first `limit` bases of E. coli
            rec = next(iter(read_records(ECOLI)))
            fasta = tmp / "ecoli_part.fa"
            fasta.write_text(f">{rec.id}_1-{limit}\n{rec.sequence[:limit]}\n")
            del rec
        ckpt = make_checkpoint(tmp / "ckpt", **cfg)
        t = time.perf_counter()
        records = load_genome(fasta)  # warm the genome cache (parsing is not embedding)
        parse_s = time.perf_counter() - t
        n_bases = sum(len(r) for r in records)
        del records
        rss_before = current_rss_bytes()
        s = embed_fasta(fasta, ckpt, tmp / "emb.npz", pool="mean", device=device, precision=precision,
                        progress=False)
        source = f"{ECOLI.name}" + (f", first {limit:,} bases" if limit else "")
        return {"measurement": which, "config": cfg, "input": source,
                "records": s.n_records, "bases": n_bases, "window": s.window, "overlap": s.overlap,
                "device": s.device, "precision": precision, "threads": threads, "parse_s": round(parse_s, 2),
                "embed_s": round(s.seconds, 2), "bases_per_s": round(s.bases_per_second, 1),
                "rss_before_forward_mb": round(rss_before / 2 ** 20, 1), "peak_rss_mb": round(rss_bytes() / 2 ** 20, 1)}


def run_child(which: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", which, "--threads", str(args.threads), "--device", args.device,
           "--precision", args.precision] + (["--limit", str(args.limit)] if args.limit else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"measurement": which, "error": f"exit {p.returncode}: {' | '.join(tail)}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["ecoli", "1m"], help="run one measurement")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch intra-op threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--limit", type=int, help="ecoli: embed only the first LIMIT bases")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "embed_speed.json")
    ap.add_argument("--child", choices=["ecoli", "1m"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.device, args.precision, args.limit)))
        return

    import torch

    results = [run_child(w, args) for w in (["ecoli", "1m"] if not args.only else [args.only])]
    print(f"{'measurement':<12} {'bases':>10} {'window':>9} {'embed s':>8} {'bases/s':>9} "
          f"{'RSS before fwd MB':>18} {'peak RSS MB':>12}")
    for r in results:
        if "error" in r:
            print(f"{r['measurement']:<12} {r['error']}")
            continue
        print(f"{r['measurement']:<12} {r['bases']:>10,} {r['window']:>9,} {r['embed_s']:>8.1f} "
              f"{r['bases_per_s']:>9,.0f} {r['rss_before_forward_mb']:>18,.0f} {r['peak_rss_mb']:>12,.0f}")
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.platform(),
              "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "python": platform.python_version(),
              "load_average_at_end": os.getloadavg(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
