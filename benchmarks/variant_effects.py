#!/usr/bin/env python
"""Sanity study for ``seqformer score-variants``: do coding SNVs that break a protein score lower?

From the annotated *E. coli* K-12 MG1655 GenBank record (NC_000913.2, the same sequence as the
shipped ``data/Ecoli_K12_MG1655.fasta.gz``) take the CDS features lying wholly in the held-out
last 10% of the genome (the validation region ``seqformer pretrain`` never trains on), and
enumerate every SNV of their codons except the start and stop codons, classed with the bacterial
code (table 11) as synonymous, missense or nonsense (a new stop). A seeded sample of
``--n-per-class`` of each class is written to a VCF in a temporary folder and scored by
:func:`reformer_seq.tasks.scoring.variants.score_vcf` with ``--baseline markov`` (both strands, default window).

Reported: AUROC of nonsense vs synonymous and missense vs synonymous, where a more negative llr
means more damaging (AUROC = P(llr of a damaging SNV < llr of a synonymous one), ties count
half), for the model and for the order-k Markov baseline fitted on the checkpoint's training
data; standard errors from ``--bootstrap`` resamples of each class. AUROC is the Mann-Whitney U
statistic computed from numpy ranks (no sklearn/scipy needed).

With ``--write-example PATH`` it writes instead the small example VCF shipped in ``data/``
(variants in the first 20 kb of the genome, from ``data/Ecoli_K12_MG1655_NC_000913.2_1-20kb.gbk``).

Examples::

    python benchmarks/variant_effects.py --checkpoint runs/ecoli
    python benchmarks/variant_effects.py --checkpoint /tmp/quick --n-per-class 100 --out /tmp/ve.json
    python benchmarks/variant_effects.py --write-example data/variants/ecoli_example.vcf
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GENBANK = REPO.parent / "shared" / "data" / "genomes" / "Ecoli_K12_MG1655_NC_000913.2.gbk.gz"
SLICE = REPO / "data" / "Ecoli_K12_MG1655_NC_000913.2_1-20kb.gbk"
REFERENCE = REPO / "data" / "Ecoli_K12_MG1655.fasta.gz"
CHROM = "K-12-MG1655"  # the record id in the shipped FASTA
CLASSES = ("synonymous", "missense", "nonsense")


def read_genbank(path: Path):
    from Bio import SeqIO

    with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
        return next(SeqIO.parse(f, "genbank"))


def coding_snvs(record, lo: int, hi: int) -> list[tuple[int, str, str, str, str]]:
    """Every SNV in the inner codons of the CDS wholly in ``[lo, hi)``: (0-based pos, ref, alt, class, gene)."""
    from Bio.Data.CodonTable import unambiguous_dna_by_id
    from Bio.Seq import reverse_complement

    table = unambiguous_dna_by_id[11]
    code = dict(table.forward_table)
    code.update({c: "*" for c in table.stop_codons})
    seq = str(record.seq).upper()
    out = []
    for f in record.features:
        loc = f.location
        if f.type != "CDS" or "pseudo" in f.qualifiers or loc.start < lo or loc.end > hi or len(loc) % 3:
            continue
        gene = (f.qualifiers.get("locus_tag") or f.qualifiers.get("gene") or ["?"])[0]
        cds = str(loc.extract(record.seq)).upper()
        coords = list(loc) if loc.strand == 1 else list(loc)[::-1]  # genome position of each CDS base
        for c in range(3, len(cds) - 3, 3):
            codon = cds[c:c + 3]
            if code.get(codon, "*") == "*":
                continue
            for k in range(3):
                for b in "ACGT":
                    if b == codon[k]:
                        continue
                    aa = code.get(codon[:k] + b + codon[k + 1:])
                    cls = "synonymous" if aa == code[codon] else ("nonsense" if aa == "*" else "missense")
                    pos = coords[c + k]
                    alt = b if loc.strand == 1 else reverse_complement(b)
                    out.append((pos, seq[pos], alt, cls, gene))
    return out


def sample(snvs: list, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    picked = []
    for cls in CLASSES:
        idx = [i for i, s in enumerate(snvs) if s[3] == cls]
        picked += [snvs[i] for i in rng.choice(idx, size=min(n, len(idx)), replace=False)]
    return sorted(picked)


def write_vcf(snvs: list, path: Path, length: int, extra: tuple = ()) -> None:
    head = ["##fileformat=VCFv4.2", f"##contig=<ID={CHROM},length={length}>",
            '##INFO=<ID=CLASS,Number=1,Type=String,Description="coding effect (table 11)">',
            '##INFO=<ID=GENE,Number=1,Type=String,Description="locus tag">',
            "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    rows = [(p, f"{CHROM}\t{p + 1}\t{cls[:3]}{i}\t{r}\t{a}\t.\tPASS\tCLASS={cls};GENE={g}")
            for i, (p, r, a, cls, g) in enumerate(snvs)] + list(extra)
    path.write_text("\n".join(head + [r for _, r in sorted(rows)]) + "\n")


def auroc(damaging: np.ndarray, benign: np.ndarray) -> float:
    """P(score of a damaging < score of a benign), ties half: Mann-Whitney U from average ranks."""
    x = np.concatenate([-damaging, -benign])  # higher = more damaging
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    edges = np.flatnonzero(np.diff(sx)) + 1
    starts, ends = np.concatenate([[0], edges]), np.concatenate([edges, [len(x)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2  # average 1-based rank of a tie block
    n1, n0 = len(damaging), len(benign)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap_se(damaging: np.ndarray, benign: np.ndarray, n: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    vals = [auroc(rng.choice(damaging, len(damaging)), rng.choice(benign, len(benign))) for _ in range(n)]
    return float(np.std(vals, ddof=1))


def read_scores(tsv: Path) -> dict[str, dict[str, np.ndarray]]:
    lines = [l.split("\t") for l in tsv.read_text().splitlines() if not l.startswith("#")]
    head, rows = lines[0], [dict(zip(lines[0], l)) for l in lines[1:]]
    out: dict[str, dict[str, list]] = {c: {"llr": [], "llr_markov": []} for c in CLASSES}
    prefix = {c[:3]: c for c in CLASSES}
    for r in rows:
        if r["llr"] == "NA":
            continue
        cls = prefix[r["id"][:3]]
        out[cls]["llr"].append(float(r["llr"]))
        out[cls]["llr_markov"].append(float(r["llr_markov"]))
    return {c: {k: np.array(v) for k, v in d.items()} for c, d in out.items()}


def study(args: argparse.Namespace) -> dict[str, Any]:
    from reformer_seq.tasks.pretrained import load_pretrained
    from reformer_seq.genome.fasta import read_records
    from reformer_seq.tasks.scoring.variants import score_vcf
    from reformer_seq.genome.windows import split_bounds

    rec = read_genbank(args.genbank)
    ref_seq = next(read_records(args.reference)).sequence.upper()
    if str(rec.seq).upper() != ref_seq:
        raise SystemExit(f"{args.genbank} and {args.reference} differ; the study needs the same sequence")
    _, _, info = load_pretrained(args.checkpoint)
    vf = float((info.get("train_data") or {}).get("val_fraction", 0.1))
    lo, hi = split_bounds(len(rec.seq), "val", vf)
    snvs = coding_snvs(rec, lo, hi)
    counts = {c: sum(s[3] == c for s in snvs) for c in CLASSES}
    picked = sample(snvs, args.n_per_class, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        vcf, tsv = Path(tmp) / "coding_snvs.vcf", Path(tmp) / "scores.tsv"
        write_vcf(picked, vcf, len(rec.seq))
        t = time.perf_counter()
        s = score_vcf(vcf, args.reference, args.checkpoint, tsv, window=args.window, baseline="markov",
                      batch_size=args.batch_size, progress=not args.quiet)
        seconds = time.perf_counter() - t
        scores = read_scores(tsv)
    res: dict[str, Any] = {"checkpoint": info["path"], "checkpoint_step": info.get("step"),
                           "checkpoint_val_bits_per_base": info.get("val_bits_per_base"),
                           "held_out": [lo, hi], "snvs_available": counts,
                           "n_scored": {c: len(scores[c]["llr"]) for c in CLASSES}, "window": s.window,
                           "strand": s.strand, "seconds": round(seconds, 1), "seed": args.seed,
                           "bootstrap": args.bootstrap, "mean_llr": {}, "auroc": {}}
    for key, name in (("llr", "model"), ("llr_markov", "markov")):
        syn = scores["synonymous"][key]
        res["mean_llr"][name] = {c: round(float(scores[c][key].mean()), 4) for c in CLASSES}
        for cls in ("nonsense", "missense"):
            a = auroc(scores[cls][key], syn)
            se = bootstrap_se(scores[cls][key], syn, args.bootstrap, args.seed)
            res["auroc"][f"{name} {cls} vs synonymous"] = {"auroc": round(a, 4), "se": round(se, 4)}
    return res


def table(res: dict[str, Any]) -> str:
    a = res["auroc"]
    lines = ["| score | nonsense vs synonymous | missense vs synonymous |", "|---|---:|---:|"]
    for name, label in (("model", f"seqformer ({Path(res['checkpoint']).parent.parent.name}, step "
                                  f"{res['checkpoint_step']})"), ("markov", "Markov baseline (--baseline markov)")):
        cells = [f"{a[f'{name} {c} vs synonymous']['auroc']:.3f} ± {a[f'{name} {c} vs synonymous']['se']:.3f}"
                 for c in ("nonsense", "missense")]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    n = res["n_scored"]
    lines.append(f"\n{n['synonymous']} synonymous, {n['missense']} missense, {n['nonsense']} nonsense SNVs; "
                 f"window {res['window']}, strand {res['strand']}, {res['seconds']} s")
    return "\n".join(lines)


def write_example(path: Path) -> None:
    """A few dozen variants in the first 20 kb (thrLABC, ...): coding SNVs, indels, an MNV, edge cases."""
    rec = read_genbank(SLICE)
    snvs = sample(coding_snvs(rec, 0, len(rec.seq)), 8, seed=1)
    s = str(rec.seq).upper()
    extra = [(1000, f"{CHROM}\t1001\tins1\t{s[1000]}\t{s[1000]}GCA\t.\tPASS\tCLASS=inframe_insertion;GENE=b0002"),
             (1500, f"{CHROM}\t1501\tdel1\t{s[1500:1505]}\t{s[1500]}\t.\tPASS\tCLASS=frameshift_deletion;GENE=b0002"),
             (2500, f"{CHROM}\t2501\tmnv1\t{s[2500:2502]}\t{'TA' if s[2500:2502] != 'TA' else 'GC'}\t.\tPASS\t"
                    f"CLASS=mnv;GENE=b0002"),
             (3000, f"{CHROM}\t3001\tmulti1\t{s[3000]}\t{','.join(b for b in 'ACGT' if b != s[3000])}\t.\tPASS\t"
                    f"CLASS=multiallelic;GENE=b0003"),
             (12000, f"{CHROM}\t12001\tsv1\t{s[12000]}\t<DEL>\t.\tPASS\tCLASS=symbolic;GENE=."),
             (2, f"{CHROM}\t3\tedge1\t{s[2]}\t{'A' if s[2] != 'A' else 'C'}\t.\tPASS\tCLASS=near_contig_start;GENE=.")]
    write_vcf(snvs, path, 4639675, tuple(extra))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="run folder or checkpoint to score with")
    ap.add_argument("--genbank", type=Path, default=GENBANK)
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    ap.add_argument("--n-per-class", type=int, default=300)
    ap.add_argument("--window", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "variant_effects.json")
    ap.add_argument("--write-example", type=Path, default=None, help="write the example VCF for data/ and stop")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.write_example:
        write_example(args.write_example)
        print(f"wrote {args.write_example}")
        return
    if not args.checkpoint:
        ap.error("--checkpoint is required")
    if not args.genbank.exists():
        raise SystemExit(f"{args.genbank} not found: the study needs the annotated E. coli GenBank (../shared/data)")
    res = study(args)
    print(table(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
