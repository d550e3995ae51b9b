#!/usr/bin/env python
"""Downstream study: do seqformer's embeddings and fine-tuning separate biology, and which layer?

Three held-out tasks built from ``../shared/data`` (splits by genome position, never random
windows of the same region):

* ``promoters``: the 100 bases upstream of annotated E. coli K-12 genes (NC_000913.2 GenBank;
  oriented with the gene; genes whose upstream window is at least half intergenic) against
  100-base windows from coding sequence (oriented with the CDS) and from intergenic DNA away from
  any gene start (random strand), half each, matched in GC content (bins of 0.04) to the
  promoters. Train on windows in the first 90% of the genome, test on the last 10%; the last
  ~11% of the training region is the validation set (early stopping, regularization choice).
* ``coding``: 200-base windows of the forward strand inside a CDS against windows overlapping no
  annotated gene; same split.
* ``ctcf``: the 500 GM12878 CTCF ChIP-seq peaks (200 bases) against one Altschul-Erickson
  dinucleotide shuffle of each (:mod:`reformer_seq.genome.shuffle`); test = peaks on chr18-22 and chrX,
  validation = chr14-16, train = the rest (a peak and its shuffle are always on the same side).

For each task, test AUROC with a bootstrap standard error (200 resamples) of:

* ``kmer-k``: logistic regression (L2, strength chosen on the validation set) on standardized
  k-mer frequencies, k = 4, 5, 6: the baseline;
* ``probe-L-pool``: the frozen backbone's pooled embeddings at layer L (0 = input embeddings ..
  depth = final output), mean or max pooling, the same logistic regression on standardized
  features (the layer sweep); ``probe-L-mean-raw``: the same without standardization (the
  centering advice);
* ``finetuned``: ``seqformer finetune`` with its defaults (all parameters; attention pooling,
  linear head, head learning rate 3e-3, backbone 3e-4; early stopping on validation AUROC),
  ``--finetune-steps`` (and at most ``--finetune-seconds``) per task, scored on the test set.

Also reported: the mean cosine similarity of random pairs of test embeddings, raw and centred.

    OMP_NUM_THREADS=1 python benchmarks/downstream.py --checkpoint /work/runs/ecoli-default \\
        --label "default config, 10 min on E. coli"

Writes ``benchmarks/results/downstream.json`` and ``downstream.png`` and prints a table.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
GBK = SHARED / "genomes" / "Ecoli_K12_MG1655_NC_000913.2.gbk.gz"
CTCF = SHARED / "tfbs" / "Gm12878.CTCF.top500.w200.fa"
RESULTS = ROOT / "benchmarks" / "results"
COMP = str.maketrans("ACGTN", "TGCAN")
CTCF_TEST = {"chr18", "chr19", "chr20", "chr21", "chr22", "chrX"}
CTCF_VAL = {"chr14", "chr15", "chr16"}


def revcomp(s: str) -> str:
    return s.translate(COMP)[::-1]


def gc(s: str) -> float:
    return (s.count("G") + s.count("C")) / max(1, len(s))


# ---------------------------------------------------------------------- tasks
def load_ecoli():
    from Bio import SeqIO

    rec = SeqIO.read(gzip.open(GBK, "rt"), "genbank")
    seq = str(rec.seq).upper()
    genes = [(int(f.location.start), int(f.location.end), f.location.strand) for f in rec.features
             if f.type == "gene"]
    cds = [(int(f.location.start), int(f.location.end), f.location.strand) for f in rec.features if f.type == "CDS"]
    return seq, genes, cds


def coverage(n: int, spans) -> np.ndarray:
    cov = np.zeros(n + 1, np.int32)
    for s, e, *_ in spans:
        cov[s] += 1
        cov[e] -= 1
    return np.cumsum(cov)[:n] > 0


def split_of(start: int, end: int, n: int) -> str | None:
    """train / val / test by genome position (None: straddles a boundary)."""
    if start >= 0.9 * n:
        return "test"
    if end <= 0.8 * n:
        return "train"
    if start >= 0.8 * n and end <= 0.9 * n:
        return "val"
    return None


def windows_where(ok: np.ndarray, w: int, step: int) -> np.ndarray:
    """Starts s (every ``step``) with ok[s:s+w] all True."""
    bad = np.concatenate([[0], np.cumsum(~ok)])
    starts = np.arange(0, len(ok) - w, step)
    return starts[(bad[starts + w] - bad[starts]) == 0]


def promoter_task(seq, genes, cds, rng, w: int = 100) -> dict:
    n = len(seq)
    in_gene = coverage(n, genes)
    pos = {}
    for s, e, strand in genes:
        a, b = (s - w, s) if strand == 1 else (e, e + w)
        if a < 0 or b > n or in_gene[a:b].mean() > 0.5:
            continue
        win = seq[a:b] if strand == 1 else revcomp(seq[a:b])
        pos[(a, b)] = win
    near_start = coverage(n, [(max(0, a - w), min(n, b + w)) for a, b in pos])
    coding_ok = coverage(n, cds) & ~near_start
    inter_ok = ~in_gene & ~near_start
    minus = np.zeros(n, bool)  # the strand of the CDS covering a base (the last one listed)
    for s, e, strand in cds:
        minus[s:e] = strand == -1
    cands = []
    for kind, ok, step in (("coding", coding_ok, 29), ("intergenic", inter_ok, 3)):
        for s in windows_where(ok, w, step):
            win = seq[s:s + w]
            flip = minus[s] if kind == "coding" else rng.random() < 0.5
            cands.append((kind, s, revcomp(win) if flip else win))
    return _gc_matched(pos, cands, n, rng)


def _gc_matched(pos: dict, cands, n: int, rng, width: float = 0.04) -> dict:
    """Negatives drawn per GC bin, half coding and half intergenic, as many as positives per split."""
    data = {k: ([], []) for k in ("train", "val", "test")}
    bins = lambda s: int(gc(s) / width)  # noqa: E731
    pools: dict = {}
    for kind, s, win in cands:
        sp = split_of(s, s + len(win), n)
        if sp:
            pools.setdefault((sp, kind, bins(win)), []).append(win)
    for (a, b), win in pos.items():
        sp = split_of(a, b, n)
        if sp is None:
            continue
        data[sp][0].append(win)
        data[sp][1].append(1)
        kind = "coding" if rng.random() < 0.5 else "intergenic"
        for k in (kind, "intergenic" if kind == "coding" else "coding"):
            pool = pools.get((sp, k, bins(win)))
            if pool:
                data[sp][0].append(pool.pop(int(rng.integers(len(pool)))))
                data[sp][1].append(0)
                break
    return data


def coding_task(seq, genes, cds, rng, w: int = 200, max_per_class: int = 2500) -> dict:
    n = len(seq)
    coding = windows_where(coverage(n, cds), w, 50)
    noncoding = windows_where(~coverage(n, genes), w, 20)
    data = {k: ([], []) for k in ("train", "val", "test")}
    by_split: dict = {}
    for label, starts in ((1, coding), (0, noncoding)):
        for s in starts:
            sp = split_of(s, s + w, n)
            if sp:
                by_split.setdefault((sp, label), []).append(s)
    for sp in data:
        k = min(len(by_split.get((sp, 0), [])), len(by_split.get((sp, 1), [])), max_per_class)
        for label in (1, 0):
            for s in rng.permutation(by_split[(sp, label)])[:k]:
                data[sp][0].append(seq[s:s + w])
                data[sp][1].append(label)
    return data


def ctcf_task(rng) -> dict:
    from reformer_seq.genome.fasta import read_records
    from reformer_seq.genome.shuffle import dinucleotide_shuffle

    data = {k: ([], []) for k in ("train", "val", "test")}
    for r in read_records(CTCF):
        chrom = r.id.split(":")[0]
        sp = "test" if chrom in CTCF_TEST else "val" if chrom in CTCF_VAL else "train"
        s = r.sequence.upper()
        data[sp][0].extend([s, dinucleotide_shuffle(s, rng)])
        data[sp][1].extend([1, 0])
    return data


# ---------------------------------------------------------------------- classifiers
def kmer_features(seqs, k: int) -> np.ndarray:
    table = np.full(256, -1, np.int64)
    table[np.frombuffer(b"ACGT", np.uint8)] = np.arange(4)
    powers = 4 ** np.arange(k - 1, -1, -1)
    out = np.zeros((len(seqs), 4 ** k), np.float32)
    for r, s in enumerate(seqs):
        codes = np.lib.stride_tricks.sliding_window_view(table[np.frombuffer(s.encode(), np.uint8)], k)  # (L-k+1, k)
        codes = codes[(codes >= 0).all(1)]
        np.add.at(out[r], codes @ powers, 1.0)
        out[r] /= max(1, len(codes))
    return out


def fit_logreg(X: np.ndarray, y: np.ndarray, lam: float) -> torch.Tensor:
    """L2-regularized logistic regression by L-BFGS; returns weights (d + 1,), bias last."""
    Xt, yt = torch.from_numpy(X).double(), torch.from_numpy(y).double()
    w = torch.zeros(X.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(Xt @ w[:-1] + w[-1], yt)
        loss = loss + 0.5 * lam * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def probe(Xtr, ytr, Xva, yva, Xte, standardize: bool = True) -> np.ndarray:
    """Test scores of a logistic regression whose L2 strength is chosen on the validation set."""
    from reformer_seq.tasks.finetune.metrics import auroc

    if standardize:
        mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
        Xtr, Xva, Xte = (Xtr - mu) / sd, (Xva - mu) / sd, (Xte - mu) / sd
    score = lambda w, X: (torch.from_numpy(X).double() @ w[:-1] + w[-1]).numpy()  # noqa: E731
    best = max((auroc(yva, score(fit_logreg(Xtr, ytr, lam), Xva)), lam) for lam in (1e-4, 1e-3, 1e-2, 1e-1))
    Xall, yall = np.concatenate([Xtr, Xva]), np.concatenate([ytr, yva])
    return score(fit_logreg(Xall, yall, best[1]), Xte)


def mean_cosine(X: np.ndarray, rng, pairs: int = 2000) -> float:
    i, j = rng.integers(0, len(X), pairs), rng.integers(0, len(X), pairs)
    a, b = X[i], X[j]
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


# ---------------------------------------------------------------------- one task
def run_task(name: str, data: dict, checkpoint: str, finetune_budget: tuple[int, float], rng, out: dict) -> None:
    from reformer_seq.tasks.pretrained import load_pretrained
    from reformer_seq.tasks.embedding import embed_sequences
    from reformer_seq.tasks.finetune.metrics import auroc, bootstrap_se

    (tr, ytr), (va, yva), (te, yte) = [(d[0], np.array(d[1])) for d in (data["train"], data["val"], data["test"])]
    res = out.setdefault(name, {"sizes": {k: [len(v[0]), int(np.sum(v[1]))] for k, v in data.items()},
                                "results": {}})

    def record(method: str, scores: np.ndarray, t0: float) -> None:
        a, se = auroc(yte, scores), bootstrap_se(yte, scores)
        res["results"][method] = {"auroc": a, "se": se, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"  {name:10s} {method:22s} AUROC {a:.3f} +- {se:.3f}", flush=True)

    for k in (4, 5, 6):
        t0 = time.perf_counter()
        record(f"kmer-{k}", probe(kmer_features(tr, k), ytr, kmer_features(va, k), yva, kmer_features(te, k)), t0)
    model, tok, _ = load_pretrained(checkpoint)
    for layer in range(len(model.layers) + 1):
        for pool in ("mean", "max"):
            t0 = time.perf_counter()
            emb = [embed_sequences(model, s, tok, pool=pool, layer=layer, batch_size=64, device="cpu")
                   for s in (tr, va, te)]
            record(f"probe-{layer}-{pool}", probe(emb[0], ytr, emb[1], yva, emb[2]), t0)
            if pool == "mean":
                record(f"probe-{layer}-mean-raw", probe(emb[0], ytr, emb[1], yva, emb[2], standardize=False), t0)
                res.setdefault("cosine", {})[str(layer)] = {
                    "raw": mean_cosine(emb[2], rng), "centred": mean_cosine(emb[2] - emb[0].mean(0), rng)}
    t0 = time.perf_counter()
    scores, res["finetune_run"] = finetune_scores(tr, ytr, va, yva, te, checkpoint, *finetune_budget)
    record("finetuned", scores, t0)


def finetune_scores(tr, ytr, va, yva, te, checkpoint: str, steps: int, seconds: float) -> tuple[np.ndarray, dict]:
    from reformer_seq.tasks.finetune.model import load_finetuned, predict_tokens
    from reformer_seq.tasks.finetune.train import FinetuneOptions, finetune

    with tempfile.TemporaryDirectory() as tmp:
        for fname, seqs, ys in (("train.tsv", tr, ytr), ("val.tsv", va, yva)):
            Path(tmp, fname).write_text("sequence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in zip(seqs, ys)))
        opts = FinetuneOptions(max_steps=steps, max_time=seconds, eval_every=50, patience=8, device="cpu")
        run = finetune({"tsv": f"{tmp}/train.tsv", "val": f"{tmp}/val.tsv"}, checkpoint, f"{tmp}/run", opts,
                       progress=False)
        print(f"  finetune: {run.line()}", flush=True)
        model, tok, _ = load_finetuned(f"{tmp}/run")
        info = {"steps": run.step, "stopped_by": run.stopped_by, "best_step": run.best_step,
                "val_auroc": run.best_value, "train_seconds": round(run.train_time, 1)}
        return predict_tokens(model, [tok.encode(s) for s in te], tok.pad_id, 64)[:, 1], info


# ---------------------------------------------------------------------- report
def table(out: dict) -> str:
    tasks = [t for t in ("promoters", "coding", "ctcf") if t in out]
    methods = list(dict.fromkeys(m for t in tasks for m in out[t]["results"]))
    lines = ["| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for m in methods:
        cells = [f"{out[t]['results'][m]['auroc']:.3f} ± {out[t]['results'][m]['se']:.3f}"
                 if m in out[t]["results"] else "" for t in tasks]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in ("promoters", "coding", "ctcf") if t in out]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4.5), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        items = [(m, r) for m, r in out[t]["results"].items() if not m.endswith("-raw")]
        colors = ["C0" if m.startswith("kmer") else "C2" if m == "finetuned" else "C1" for m, _ in items]
        ax.barh([m for m, _ in items], [r["auroc"] for _, r in items], xerr=[r["se"] for _, r in items],
                color=colors)
        ax.axvline(0.5, color="grey", lw=0.8)
        ax.set_xlim(0.4, 1.0)
        ax.set_title(t)
        ax.set_xlabel("test AUROC (± bootstrap SE)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="pretrained run or checkpoint folder")
    ap.add_argument("--label", default="", help="what the backbone is (written into the JSON)")
    ap.add_argument("--tasks", default="promoters,coding,ctcf")
    ap.add_argument("--finetune-steps", type=int, default=1200, help="fine-tuning steps per task (early stopping aside)")
    ap.add_argument("--finetune-seconds", type=float, default=240, help="and at most this many seconds")
    ap.add_argument("--out", default=str(RESULTS / "downstream.json"))
    args = ap.parse_args()
    if not GBK.is_file() or not CTCF.is_file():
        sys.exit(f"needs {GBK} and {CTCF} (the shared data set)")
    from reformer_seq.runtime.checkpoint import resolve_checkpoint

    t_start = time.perf_counter()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    seq, genes, cds = load_ecoli()
    ck = str(resolve_checkpoint(args.checkpoint))
    info = json.loads(Path(ck, "config.json").read_text())
    out: dict = {"backbone": {"checkpoint": ck, "label": args.label, "step": info.get("step"),
                              "val_bits_per_base": info.get("val_bits_per_base"), "model": info["model"]},
                 "finetune_steps": args.finetune_steps, "finetune_seconds": args.finetune_seconds}
    builders = {"promoters": lambda: promoter_task(seq, genes, cds, rng), "coding": lambda: coding_task(seq, genes, cds, rng),
                "ctcf": lambda: ctcf_task(rng)}
    for name in args.tasks.split(","):
        data = builders[name]()
        print(f"{name}: " + ", ".join(f"{k} {len(v[0])} ({sum(v[1])} positive)" for k, v in data.items()), flush=True)
        out.setdefault("tasks", {})
        run_task(name, data, args.checkpoint, (args.finetune_steps, args.finetune_seconds), rng, out["tasks"])
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    plot(out["tasks"], path.with_suffix(".png"))
    print(table(out["tasks"]))
    print(f"wrote {path} and {path.with_suffix('.png')} in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
