#!/usr/bin/env python
"""Variant-effect study: do coding SNVs that break a protein score lower? Baselines and models side by side.

**The sample.** From the annotated *E. coli* K-12 MG1655 GenBank record (NC_000913.2, the same
sequence as the shipped ``data/Ecoli_K12_MG1655.fasta.gz``, record ``K-12-MG1655``) take the CDS
lying wholly in the held-out last 10% of the genome (``--val-fraction``; the region ``seqformer
pretrain`` never trains on) and every SNV of their inner codons, classed with the bacterial code
(table 11) as synonymous, missense or nonsense by
:func:`reformer_seq.tasks.scoring.coding_snvs.coding_snvs`. A seeded sample of ``--n-per-class``
of each class is checked (every REF is the genome's base, every ALT differs; counts per class
and gene strand are printed) and written as a VCF next to ``--out`` (``<out>.vcf``) for reuse.

**The scores**, all "negative = damaging" (ALT less likely / less gene-like than REF):

* Markov-k: ``score-variants --baseline markov`` (order chosen on held-out training data as
  ``seqformer evaluate`` does), column ``llr_markov``;
* gene HMM: ``score-variants --baseline gene``, column ``llr_gene``, when the library has it;
* pyrodigal: Δ summed gene score, ALT minus REF, of the 6 kb window centred on the SNV, where the
  *summed gene score* of a sequence is the sum of ``gene.score`` (Prodigal's total score, coding
  plus start score) over every gene ``pyrodigal.GeneFinder(meta=False)`` predicts in it, on both
  strands; the finder is trained on the first 90% of the genome (the training region);
* each ``--checkpoint`` (repeatable, a run folder): ``score-variants`` ``llr``.

Every score uses the score_vcf defaults: causal LLR, 4,096-base window, mean of both strands.
The baselines are fitted on the training region of the shipped FASTA (not each checkpoint's
data), through a tiny random-weight "carrier" checkpoint whose own llr is ignored, so they run
without any trained model and are the same whichever checkpoints are compared.

Reported: AUROC of nonsense vs synonymous and missense vs synonymous, AUROC = P(score of a
damaging SNV < score of a synonymous one), ties count half (Mann-Whitney from ranks), with
standard errors from ``--bootstrap`` resamples of each class. A Markdown table is printed and
the JSON written to ``--out``.

With ``--write-example PATH`` it writes instead the small example VCF shipped in ``data/``
(variants in the first 20 kb of the genome, from ``data/Ecoli_K12_MG1655_NC_000913.2_1-20kb.gbk``).

Examples::

    python benchmarks/variant_effects.py                                   # baselines only
    python benchmarks/variant_effects.py --checkpoint runs/ecoli --checkpoint runs/long
    python benchmarks/variant_effects.py --n-per-class 100 --bootstrap 200 --out /tmp/ve.json
    python benchmarks/variant_effects.py --write-example data/variants/ecoli_example.vcf
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GENBANK = REPO.parent / "shared" / "data" / "genomes" / "Ecoli_K12_MG1655_NC_000913.2.gbk.gz"
SLICE = REPO / "data" / "Ecoli_K12_MG1655_NC_000913.2_1-20kb.gbk"
REFERENCE = REPO / "data" / "Ecoli_K12_MG1655.fasta.gz"
CHROM = "K-12-MG1655"  # the record id in the shipped FASTA
CLASSES = ("synonymous", "missense", "nonsense")
# score_vcf baselines: (--baseline value, TSV column, label); a new baseline is one more line here
BASELINES = [("markov", "llr_markov", "Markov-{order} (--baseline markov)"),
             ("gene", "llr_gene", "gene HMM, order 5 (--baseline gene)"),
             ("prodigal", "llr_prodigal", "Prodigal, 4,096-base grid window, both strands (--baseline prodigal)")]
PYRODIGAL_HALF = 3000  # the pyrodigal window: 6 kb centred on the SNV


# ---------------------------------------------------------------------- the sample
def load_genome(genbank: Path, reference: Path):
    """(sequence, CDS list) of the single record; the GenBank and the FASTA must hold the same sequence."""
    from reformer_seq.genome.annotation import read_cds
    from reformer_seq.genome.fasta import read_records

    seq = next(read_records(reference)).sequence.upper()
    annotated = next(read_records(genbank)).sequence.upper()
    if annotated != seq:
        raise SystemExit(f"{genbank} and {reference} differ; the study needs the same sequence")
    (genes,) = read_cds(genbank).values()
    return seq, genes


def sample(snvs: list, n: int, seed: int) -> list:
    """``n`` SNVs of each class (all if fewer), seeded, sorted by position."""
    rng = np.random.default_rng(seed)
    picked = []
    for cls in CLASSES:
        idx = [i for i, s in enumerate(snvs) if s.effect == cls]
        picked += [snvs[i] for i in rng.choice(idx, size=min(n, len(idx)), replace=False)]
    return sorted(picked, key=lambda s: (s.pos, s.alt))


def check_sample(picked: list, seq: str) -> dict[str, dict[str, int]]:
    """Assert every REF is the genome's base and ALT differs; counts per class and gene strand."""
    bad = [s for s in picked if seq[s.pos] != s.ref or s.alt == s.ref or s.alt not in "ACGT"]
    assert not bad, f"{len(bad)} sampled SNVs with a wrong REF or ALT == REF, e.g. {bad[:3]}"
    counts = Counter((s.effect, "+" if s.strand == 1 else "-") for s in picked)
    return {c: {st: counts[(c, st)] for st in "+-"} for c in CLASSES}


def vcf_id(i: int, cls: str) -> str:
    return f"{cls[:3]}{i}"


def write_vcf(snvs: list, path: Path, length: int, extra: tuple = ()) -> None:
    head = ["##fileformat=VCFv4.2", f"##contig=<ID={CHROM},length={length}>",
            '##INFO=<ID=CLASS,Number=1,Type=String,Description="coding effect (table 11)">',
            '##INFO=<ID=GENE,Number=1,Type=String,Description="locus tag">',
            '##INFO=<ID=STRAND,Number=1,Type=Integer,Description="strand of the gene (1 or -1)">',
            "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    rows = [(s.pos, f"{CHROM}\t{s.pos + 1}\t{vcf_id(i, s.effect)}\t{s.ref}\t{s.alt}\t.\tPASS\t"
                    f"CLASS={s.effect};GENE={s.gene};STRAND={s.strand}") for i, s in enumerate(snvs)] + list(extra)
    path.write_text("\n".join(head + [r for _, r in sorted(rows)]) + "\n")


# ---------------------------------------------------------------------- the scores
def carrier_checkpoint(folder: Path, reference: Path, window: int, val_fraction: float) -> Path:
    """A tiny random-weight causal model whose config names the reference as training data: score_vcf
    needs a checkpoint, and its baselines are fitted on that checkpoint's training region."""
    import torch

    from reformer_seq.config import load_run_config
    from reformer_seq.model.lm import ReformerLM

    cfg = load_run_config(REPO / "configs" / "tiny.yaml").model
    cfg.causal, cfg.max_seq_len = True, max(window, cfg.max_seq_len)
    torch.manual_seed(0)
    return ReformerLM(cfg).save_pretrained(folder, meta={
        "objective": "causal", "step": 0, "train_data": {"paths": [str(reference)], "val_fraction": val_fraction,
                                                          "alphabet": "nucleotide", "seq_len": window}})


def read_tsv(tsv: Path) -> tuple[list[dict[str, str]], list[str]]:
    """(rows, comment lines) of a score-variants TSV."""
    lines = tsv.read_text().splitlines()
    comments = [l[2:] for l in lines if l.startswith("#")]
    body = [l.split("\t") for l in lines if not l.startswith("#")]
    return [dict(zip(body[0], l)) for l in body[1:]], comments


def column(rows: list[dict[str, str]], key: str) -> dict[str, float]:
    """``{vcf id: score}``, NaN where not scored."""
    return {r["id"]: float(r[key]) if r.get(key, "NA") != "NA" else float("nan") for r in rows}


def score_with(vcf: Path, reference: Path, checkpoint: Path, tmp: Path, args, baseline=None):
    from reformer_seq.tasks.scoring.variants import score_vcf

    tsv = tmp / f"scores_{baseline or 'model'}_{abs(hash(str(checkpoint))) % 10**6}.tsv"
    s = score_vcf(vcf, reference, checkpoint, tsv, window=args.window, baseline=baseline,
                  batch_size=args.batch_size, progress=not args.quiet)
    return s, *read_tsv(tsv)


def baseline_scores(vcf: Path, reference: Path, tmp: Path, args) -> tuple[dict, dict]:
    """``{label: {id: score}}`` of every score_vcf baseline the library has, and notes on the others."""
    from reformer_seq.errors import SeqformerError

    carrier = carrier_checkpoint(tmp / "carrier", reference, args.window, args.val_fraction)
    scores, notes = {}, {}
    for name, key, label in BASELINES:
        try:
            s, rows, comments = score_with(vcf, reference, carrier, tmp, args, baseline=name)
        except SeqformerError as e:
            if "--baseline" not in str(e):
                raise
            notes[name] = f"not available: {e}"
            continue
        order = next((c.split("order-")[1].split()[0] for c in comments if c.startswith(key) and "order-" in c), "k")
        scores[label.format(order=order)] = column(rows, key)
        notes[name] = f"{s.n_scored} of {s.n_alleles} scored in {s.seconds:.0f} s"
    return scores, notes


def summed_gene_score(finder, seq: str) -> float:
    """Sum of ``gene.score`` over every gene ``finder`` predicts in ``seq`` (both strands)."""
    return float(sum(g.score for g in finder.find_genes(seq)))


def pyrodigal_scores(picked: list, seq: str, train_hi: int, half: int = PYRODIGAL_HALF) -> dict[str, float]:
    """``{id: Δ summed gene score}``, ALT minus REF, of the ``2 * half`` window centred on each SNV."""
    import pyrodigal

    finder = pyrodigal.GeneFinder(meta=False)
    finder.train(seq[:train_hi], translation_table=11)
    out = {}
    for i, s in enumerate(picked):
        lo, hi = max(0, s.pos - half), min(len(seq), s.pos + half)
        ref = seq[lo:hi]
        alt = ref[:s.pos - lo] + s.alt + ref[s.pos - lo + 1:]
        out[vcf_id(i, s.effect)] = summed_gene_score(finder, alt) - summed_gene_score(finder, ref)
    return out


# ---------------------------------------------------------------------- AUROC
def auroc(damaging: np.ndarray, benign: np.ndarray) -> float:
    """P(score of a damaging < score of a benign), ties half: Mann-Whitney U from average ranks."""
    from reformer_seq.tasks.finetune.metrics import auroc as ranked_auroc

    labels = np.r_[np.ones(len(damaging)), np.zeros(len(benign))]
    return ranked_auroc(labels, -np.r_[damaging, benign])  # higher = more damaging


def bootstrap_se(damaging: np.ndarray, benign: np.ndarray, n: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    vals = [auroc(rng.choice(damaging, len(damaging)), rng.choice(benign, len(benign))) for _ in range(n)]
    return float(np.std(vals, ddof=1))


def by_class(picked: list, scores: dict[str, float]) -> dict[str, np.ndarray]:
    """Each class's finite scores."""
    out: dict[str, list] = {c: [] for c in CLASSES}
    for i, s in enumerate(picked):
        v = scores[vcf_id(i, s.effect)]
        if np.isfinite(v):
            out[s.effect].append(v)
    return {c: np.array(v) for c, v in out.items()}


def evaluate(picked: list, scores: dict[str, float], n_boot: int, seed: int) -> dict[str, Any]:
    cls = by_class(picked, scores)
    res: dict[str, Any] = {"n": {c: len(v) for c, v in cls.items()},
                           "mean": {c: round(float(v.mean()), 4) if len(v) else None for c, v in cls.items()}}
    for damaging in ("nonsense", "missense"):
        a = auroc(cls[damaging], cls["synonymous"])
        se = bootstrap_se(cls[damaging], cls["synonymous"], n_boot, seed)
        res[f"{damaging} vs synonymous"] = {"auroc": round(a, 4), "se": round(se, 4)}
    return res


# ---------------------------------------------------------------------- the study
def timed(fn: Callable, *a):
    t = time.perf_counter()
    out = fn(*a)
    return out, round(time.perf_counter() - t, 1)


def checkpoint_label(path: str, info: dict) -> str:
    return f"seqformer {Path(path).name} (step {info.get('step')})"


def checkpoint_scores(vcf: Path, tmp: Path, args) -> tuple[dict, dict]:
    from reformer_seq.tasks.pretrained import load_pretrained

    scores, meta = {}, {}
    for ck in args.checkpoint:
        _, _, info = load_pretrained(ck)
        label = checkpoint_label(ck, info)
        (s, rows, _), sec = timed(score_with, vcf, args.reference, Path(ck), tmp, args)
        scores[label] = column(rows, "llr")
        meta[label] = {"path": info["path"], "step": info.get("step"), "seconds": sec,
                       "val_bits_per_base": info.get("val_bits_per_base"), "train_data": info.get("train_data")}
    return scores, meta


def study(args: argparse.Namespace) -> dict[str, Any]:
    from reformer_seq.genome.windows import split_bounds
    from reformer_seq.tasks.scoring.coding_snvs import coding_snvs

    seq, genes = load_genome(args.genbank, args.reference)
    lo, hi = split_bounds(len(seq), "val", args.val_fraction)
    snvs = coding_snvs(seq, genes, lo, hi)
    picked = sample(snvs, args.n_per_class, args.seed)
    counts = check_sample(picked, seq)
    print("sampled SNVs (REF matches the genome, ALT != REF), by class and gene strand:")
    for c in CLASSES:
        print(f"  {c:<11} + {counts[c]['+']:>4}   - {counts[c]['-']:>4}")
    vcf = args.out.with_suffix(".vcf")
    vcf.parent.mkdir(parents=True, exist_ok=True)
    write_vcf(picked, vcf, len(seq))
    print(f"wrote the sample to {vcf}")
    with tempfile.TemporaryDirectory() as tmp:
        base, base_notes, t_base, t_prod, prod = {}, {}, 0.0, 0.0, None
        if not args.models_only:
            (base, base_notes), t_base = timed(baseline_scores, vcf, args.reference, Path(tmp), args)
            (prod, t_prod) = timed(pyrodigal_scores, picked, seq, lo)
        models, model_meta = checkpoint_scores(vcf, Path(tmp), args)
    scores = {**base, **({"pyrodigal (Δ summed gene score, 6 kb)": prod} if prod is not None else {}), **models}
    return {"held_out": [lo, hi], "snvs_available": dict(Counter(s.effect for s in snvs)),
            "sample": {"vcf": str(vcf), "counts": counts, "seed": args.seed, "n_per_class": args.n_per_class},
            "window": args.window, "strand": "both", "bootstrap": args.bootstrap,
            "baselines": base_notes, "checkpoints": model_meta,
            "seconds": {"baselines": t_base, "pyrodigal": t_prod},
            "results": {name: evaluate(picked, s, args.bootstrap, args.seed) for name, s in scores.items()}}


def table(res: dict[str, Any]) -> str:
    lines = ["| score | nonsense vs synonymous | missense vs synonymous | n (syn/mis/non) |", "|---|---:|---:|---:|"]
    for name, r in res["results"].items():
        cells = [f"{r[f'{c} vs synonymous']['auroc']:.3f} ± {r[f'{c} vs synonymous']['se']:.3f}"
                 for c in ("nonsense", "missense")]
        n = "/".join(str(r["n"][c]) for c in CLASSES)
        lines.append(f"| {name} | {' | '.join(cells)} | {n} |")
    lo, hi = res["held_out"]
    lines.append(f"\nCDS wholly in {lo:,}-{hi:,} (held out); window {res['window']}, strand {res['strand']}; "
                 f"± bootstrap SE ({res['bootstrap']} resamples per class)")
    missing = {k: v for k, v in res["baselines"].items() if v.startswith("not available")}
    lines += [f"--baseline {k}: {v}" for k, v in missing.items()]
    return "\n".join(lines)


def write_example(path: Path) -> None:
    """A few dozen variants in the first 20 kb (thrLABC, ...): coding SNVs, indels, an MNV, edge cases."""
    from reformer_seq.genome.annotation import read_cds
    from reformer_seq.genome.fasta import read_records
    from reformer_seq.tasks.scoring.coding_snvs import coding_snvs

    s = next(read_records(SLICE)).sequence.upper()
    (genes,) = read_cds(SLICE).values()
    snvs = sample(coding_snvs(s, genes), 8, seed=1)
    check_sample(snvs, s)
    extra = [(1000, f"{CHROM}\t1001\tins1\t{s[1000]}\t{s[1000]}GCA\t.\tPASS\tCLASS=inframe_insertion;GENE=b0002"),
             (1500, f"{CHROM}\t1501\tdel1\t{s[1500:1505]}\t{s[1500]}\t.\tPASS\tCLASS=frameshift_deletion;GENE=b0002"),
             (2500, f"{CHROM}\t2501\tmnv1\t{s[2500:2502]}\t{'TA' if s[2500:2502] != 'TA' else 'GC'}\t.\tPASS\t"
                    f"CLASS=mnv;GENE=b0002"),
             (3000, f"{CHROM}\t3001\tmulti1\t{s[3000]}\t{','.join(b for b in 'ACGT' if b != s[3000])}\t.\tPASS\t"
                    f"CLASS=multiallelic;GENE=b0003"),
             (12000, f"{CHROM}\t12001\tsv1\t{s[12000]}\t<DEL>\t.\tPASS\tCLASS=symbolic;GENE=."),
             (2, f"{CHROM}\t3\tedge1\t{s[2]}\t{'A' if s[2] != 'A' else 'C'}\t.\tPASS\tCLASS=near_contig_start;GENE=.")]
    write_vcf(snvs, path, 4639675, tuple(extra))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", default=[], help="run folder to score with (repeatable)")
    ap.add_argument("--genbank", type=Path, default=GENBANK)
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    ap.add_argument("--n-per-class", type=int, default=500)
    ap.add_argument("--val-fraction", type=float, default=0.1, help="held-out fraction at the genome's end")
    ap.add_argument("--window", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "variant_effects.json",
                    help="JSON results; the sampled VCF goes next to it (same name, .vcf)")
    ap.add_argument("--write-example", type=Path, default=None, help="write the example VCF for data/ and stop")
    ap.add_argument("--models-only", action="store_true",
                    help="score only the --checkpoint models and add them to the results already in --out "
                         "(same sample: same --seed and --n-per-class)")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args()


def merge_into(path: Path, res: dict[str, Any]) -> dict[str, Any]:
    """``res`` (models only) added to the results already in ``path``, which must hold the same sample."""
    old = json.loads(path.read_text()) if path.is_file() else None
    if old is None:
        return res
    if old.get("sample", {}).get("counts") != res["sample"]["counts"] or old.get("held_out") != res["held_out"]:
        raise SystemExit(f"{path} holds another sample (seed / n-per-class / held-out region); drop --models-only")
    old["results"].update(res["results"])
    old.setdefault("checkpoints", {}).update(res["checkpoints"])
    return old


def main() -> None:
    args = parse_args()
    if args.write_example:
        write_example(args.write_example)
        print(f"wrote {args.write_example}")
        return
    if not args.genbank.exists():
        raise SystemExit(f"{args.genbank} not found: the study needs the annotated E. coli GenBank (../shared/data)")
    res = study(args)
    if args.models_only:
        res = merge_into(args.out, res)
    print(table(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
