"""Gene-aware baselines on E. coli K-12 (issue 27): held-out bits per base of the gene HMM against Markov chains.

Fitted on the first 90% of the genome, scored on the last 10% (464 kb), as
``markov_holdout_table`` does for the Markov chains. The gene HMM
(``reformer_seq/tasks/evaluation/gene_hmm.py``) is fitted twice: on the GenBank CDS of the first
90% (NC_000913.2, the same sequence as data/Ecoli_K12_MG1655.fasta.gz) and on Prodigal's gene
calls there (pyrodigal, single-genome mode, trained on the first 90% only). Orders 2 and 5, with
start/stop codon states (19 states) and without (7). Times are wall-clock on this machine.
The windowed scoring (``gene_hmm_window`` bases after ``gene_hmm_burn_in`` of context) is
compared with the exact forward over the whole held-out segment once.

    python benchmarks/gene_baselines.py [--genbank PATH] [--fasta PATH] [--out benchmarks/results/gene_baselines.json]

Reference figures from the issue: 13-state order-2 HMM 1.894, order-5 1.861; Markov-6 1.934.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from reformer_seq.genome.encoded import load_genome
from reformer_seq.tasks.evaluation.gene_hmm import predictive_logp
from reformer_seq.tasks.evaluation.gene_hmm_baseline import gene_hmm_bits, labelled_training_segments
from reformer_seq.tasks.evaluation.gene_hmm_fit import fit_gene_hmm
from reformer_seq.tasks.evaluation.markov import BaselineData, MarkovModel, split_segments

ROOT = Path(__file__).resolve().parents[1]
GENBANK = ROOT.parent / "shared" / "data" / "genomes" / "Ecoli_K12_MG1655_NC_000913.2.gbk.gz"
FASTA = ROOT / "data" / "Ecoli_K12_MG1655.fasta.gz"


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def data_for(path: Path) -> BaselineData:
    records = load_genome(path)
    train, val = split_segments(records, 0.1)
    return BaselineData(train, val, str(path), False, [path] * len(records), [r.id for r in records])


def exact_bits(model, seg) -> float:
    """The exact forward over the whole segment (one window from the record's start of the segment)."""
    ids = np.asarray(seg.ids[:seg.hi]).astype(np.int64)
    lp = predictive_logp(model, ids[seg.lo - 1:][None])[0]
    tgt = ids[seg.lo:] - 4
    ok = (tgt >= 0) & (tgt < 4)
    return float(-lp[np.arange(len(tgt))[ok], tgt[ok]].mean() / math.log(2))


def gene_rows(data: BaselineData, label: str) -> list[dict]:
    (labelled, fitted_on), t_genes = timed(labelled_training_segments, data)
    rows = []
    for codon_states in (True, False):
        for order in (2, 5):
            model, t_fit = timed(fit_gene_hmm, labelled, order, 0.5, codon_states)
            bits, t_score = timed(gene_hmm_bits, model, data.val)
            rows.append({"model": "gene HMM", "fitted_on": fitted_on, "order": order,
                         "n_states": model.n_states, "n_parameters": model.n_parameters,
                         "n_training_genes": sum(len(x.genes) for x in labelled), "bits_per_base": round(bits, 6),
                         "gene_calls_seconds": round(t_genes, 2), "fit_seconds": round(t_fit, 2),
                         "score_seconds": round(t_score, 2)})
            print(rows[-1], flush=True)
            if order == 5 and codon_states:
                exact, t_exact = timed(exact_bits, model, data.val[0])
                rows[-1].update(exact_forward_bits_per_base=round(exact, 6), windowed_minus_exact=bits - exact,
                                exact_forward_seconds=round(t_exact, 1))
    return rows


def markov_rows(data: BaselineData) -> list[dict]:
    full, t_fit = timed(MarkovModel.fit, data.train, 12)
    rows = []
    for k in (2, 5, 6, 8):
        bits, t_score = timed(full.truncated(k).bits_per_base, data.val)
        rows.append({"model": "Markov chain", "fitted_on": "sequence", "order": k, "n_states": 1,
                     "n_parameters": 3 * 4 ** k, "bits_per_base": round(bits, 4), "fit_seconds": round(t_fit, 2),
                     "score_seconds": round(t_score, 2)})
    return rows


def table(rows: list[dict]) -> str:
    head = "| model | fitted on | order | states | parameters | bits/base | gene calls s | fit s | score s |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['fitted_on']} | {r['order']} | {r['n_states']} | {r['n_parameters']:,} | "
                     f"{r['bits_per_base']:.4f} | {r.get('gene_calls_seconds', '–')} | {r['fit_seconds']} | "
                     f"{r['score_seconds']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genbank", type=Path, default=GENBANK)
    ap.add_argument("--fasta", type=Path, default=FASTA)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gene_baselines.json")
    args = ap.parse_args()
    rows = gene_rows(data_for(args.genbank), "GenBank CDS") + gene_rows(data_for(args.fasta), "pyrodigal calls")
    rows += markov_rows(data_for(args.fasta))
    md = table(rows)
    md += "".join(f"\n\nWindowed scoring vs the exact forward over the whole held-out segment ({r['model']}, order "
                  f"{r['order']}): {r['bits_per_base']:.6f} vs {r['exact_forward_bits_per_base']:.6f} bits/base "
                  f"(difference {r['windowed_minus_exact']:+.1e}; exact forward {r['exact_forward_seconds']} s)."
                  for r in rows if "exact_forward_bits_per_base" in r)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"genome": "E. coli K-12 MG1655 (NC_000913.2)", "train": "first 90%",
                                    "scored": "last 10% (464 kb)", "reference": {"hmm13_order2": 1.894,
                                    "hmm13_order5": 1.861, "markov6": 1.934}, "rows": rows}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text("# Gene-aware baselines, E. coli K-12 (first 90% -> last 10%)\n\n"
                                           + md + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
