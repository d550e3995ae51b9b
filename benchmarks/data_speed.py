#!/usr/bin/env python
"""How long reading, encoding and windowing a genome takes: first run (empty cache) against cached.

For the genome (default: the shipped E. coli K-12 MG1655, 4.6 Mb, gzip FASTA) each repeat uses a
fresh, empty cache folder and times:

* the parts of a first run: hashing the file, parsing it with Bio.SeqIO (gzip included), encoding
  with the nucleotide tokenizer (lenient, and strict: the 4.6 Mb genome well under 0.5 s on 2 cores), and the whole ``load_genome`` (all of these plus the cache write);
* ``load_genome`` again, now served from the cache (hash + memory-map);
* windowing: ``GenomeWindowDataset`` for the train and val splits (window list, N filter);
* one pass over the training windows (``dataset[i]`` for every window: slicing, reverse
  complement, tensor), then the same pass as batches of 4 through ``make_dataloader`` with the
  causal and the masked collator.

The median over ``--repeats`` is kept. Imports (torch, Biopython) happen before any timing and
are reported separately. Prints a table and writes JSON (``--out``).

Example::

    python benchmarks/data_speed.py --seq-len 65536 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def one_repeat(path: Path, seq_len: int) -> dict[str, float]:
    """Seconds for each stage, with a fresh cache folder."""
    from reformer_seq.genome.encoded import file_sha256, load_genome
    from reformer_seq.genome.fasta import read_records
    from reformer_seq.genome.tokenizers import NucleotideTokenizer
    from reformer_seq.genome.batches import CausalCollator, MaskedCollator, make_dataloader
    from reformer_seq.genome.windows import GenomeWindowDataset

    tok = NucleotideTokenizer()
    r: dict[str, float] = {}
    r["hash"], _ = timed(lambda: file_sha256(path))
    r["parse (Bio.SeqIO)"], seqs = timed(lambda: [rec.sequence for rec in read_records(path)])
    r["encode"], _ = timed(lambda: [tok.encode(s) for s in seqs])
    r["encode, strict"], _ = timed(lambda: [tok.encode(s, strict=True) for s in seqs])  # was a 0.5 s unit test
    del seqs

    def windows(records):
        return GenomeWindowDataset(records, seq_len, tok, split="train"), GenomeWindowDataset(records, seq_len, tok, split="val")

    with tempfile.TemporaryDirectory() as cache:
        r["load_genome, first run"], recs = timed(lambda: load_genome(path, tok, cache_dir=cache))
        r["windows, first run"], _ = timed(lambda: windows(recs))
        r["load_genome, cached"], recs = timed(lambda: load_genome(path, tok, cache_dir=cache))
        r["windows, cached"], (train, val) = timed(lambda: windows(recs))
        r["one pass over train windows"], _ = timed(lambda: [train[i] for i in range(len(train))])
        for name, collate in (("causal", CausalCollator(tok)), ("masked", MaskedCollator(tok))):
            loader = make_dataloader(train, 4, collate, seed=0)
            r[f"one pass, {name} batches of 4"], _ = timed(lambda: sum(1 for _ in loader))
        r["n_train_windows"], r["n_val_windows"] = len(train), len(val)
        r["bases"] = sum(len(x) for x in recs)
    r["TOTAL first run (load + windows)"] = r["load_genome, first run"] + r["windows, first run"]
    r["TOTAL cached (load + windows)"] = r["load_genome, cached"] + r["windows, cached"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genome", type=Path, default=REPO / "data" / "Ecoli_K12_MG1655.fasta.gz")
    ap.add_argument("--seq-len", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "data_speed.json")
    args = ap.parse_args()

    t_import, _ = timed(lambda: (__import__("torch"), __import__("Bio.SeqIO"), __import__("reformer_seq.genome.windows")))
    runs = [one_repeat(args.genome, args.seq_len) for _ in range(args.repeats)]
    keys = list(runs[0])
    median = {k: statistics.median(r[k] for r in runs) for k in keys}

    counts = {"bases", "n_train_windows", "n_val_windows"}
    print(f"{args.genome.name}: {int(median['bases']):,} bases, seq_len {args.seq_len:,}, "
          f"{int(median['n_train_windows'])} train / {int(median['n_val_windows'])} val windows; "
          f"median of {args.repeats} (imports {t_import:.2f} s, not included)")
    print(f"| {'stage':<36} | {'seconds':>8} |")
    print(f"|{'-' * 38}|{'-' * 10}|")
    for k in keys:
        if k not in counts:
            print(f"| {k:<36} | {median[k]:>8.4f} |")
    speedup = median["TOTAL first run (load + windows)"] / median["TOTAL cached (load + windows)"]
    print(f"cached is {speedup:.0f}x faster than the first run")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"genome": args.genome.name, "seq_len": args.seq_len, "repeats": args.repeats,
              "import_seconds": t_import, "median_seconds": median, "runs": runs,
              "machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "processor": platform.processor()},
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
