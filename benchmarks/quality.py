#!/usr/bin/env python
"""Model quality: does seqformer model DNA better than fixed-order Markov models?

Trains variants of the default config (``configs/default.yaml``) for a fixed time budget each,
on a genome's first 90% per record, and reports held-out bits per base on the last 10% (the
whole held-out split, strictly causal windows) next to Markov models of order 0..12 fitted on
the same split. Studies (``--study``):

* ``levers``: what each lever is worth on E. coli K-12 (local attention, causal convolution,
  window length, hash rounds, learning rate, reverse-complement augmentation, ...);
* ``lsh-vs-exact``: the same config and the same number of steps at 4K tokens with LSH and with
  exact attention in the LSH layer;
* ``context``: bits per base against training/evaluation context length (1K, 4K, 16K, 64K) on
  the human chrX slice (``../shared/data/genomes/Human_GRCh37_chrX_20-28Mb.fa.gz``);
* ``final``: the default config with ``--max-time`` (the README's headline figure).

Each variant runs in this process, one after the other (``reformer_seq.training.pretrain``
with the variant's overrides); results go to ``<out>/quality_<study>.json`` and ``.md``, and
the validation curves to ``.png``. Runs are kept under ``<out>/runs/<study>/<variant>``.

Examples::

    python benchmarks/quality.py --study levers --minutes 5
    python benchmarks/quality.py --study lsh-vs-exact --steps 300
    python benchmarks/quality.py --study final --minutes 30
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reformer_seq.config import load_run_config  # noqa: E402
from reformer_seq.evaluation import markov_holdout_table  # noqa: E402
from reformer_seq.fasta import load_genome  # noqa: E402
from reformer_seq.tokenizers import NucleotideTokenizer  # noqa: E402
from reformer_seq.training import pretrain  # noqa: E402

ECOLI = ROOT / "data" / "Ecoli_K12_MG1655.fasta.gz"
CHRX = ROOT.parent / "shared" / "data" / "genomes" / "Human_GRCh37_chrX_20-28Mb.fa.gz"

# name -> overrides on configs/default.yaml ({section: {key: value}})
LEVERS = {
    "default": {},
    "no-conv": {"model": {"conv_kernel": 0}},
    "lsh-only": {"model": {"attn_layers": ["lsh", "lsh"]}},
    "window-1K": {"data": {"seq_len": 1024}, "train": {"batch_size": 16}},
    "window-16K": {"data": {"seq_len": 16384}, "train": {"batch_size": 1}},
    "hashes-2": {"model": {"n_hashes": 2}},
    "lr-1e-2": {"train": {"lr": 1e-2}},
    "lr-1e-3": {"train": {"lr": 1e-3}},
    "no-rc": {"data": {"rc_augment": False}},
    "dim-128": {"model": {"dim": 128}},
}
LSH_VS_EXACT = {
    "lsh-4K": {"data": {"seq_len": 4096}},
    "exact-4K": {"data": {"seq_len": 4096}, "model": {"attn_layers": ["local", "full"]}},
}
CONTEXT = {f"context-{n // 1024}K": {"data": {"seq_len": n}, "train": {"batch_size": max(1, 16384 // n)}}
           for n in (1024, 4096, 16384, 65536)}
STUDIES = {"levers": (LEVERS, ECOLI), "lsh-vs-exact": (LSH_VS_EXACT, ECOLI), "context": (CONTEXT, CHRX),
           "final": ({"default": {}}, ECOLI)}


def merge(cfg, overrides):
    cfg = copy.deepcopy(cfg)
    for section, values in overrides.items():
        for k, v in values.items():
            setattr(getattr(cfg, section), k, v)
    cfg.model.__post_init__()
    return cfg


def run_variant(name, overrides, genome, out, seconds, steps, seed):
    cfg = merge(load_run_config(ROOT / "configs" / "default.yaml"), overrides)
    cfg.train.seed = seed
    if steps:
        cfg.train.max_steps, cfg.train.max_time = steps, None
    else:
        cfg.train.max_steps, cfg.train.max_time = 10 ** 7, seconds
    cfg.train.eval_every = 10 ** 9 if not steps else max(steps // 6, 1)  # periodic validation only for fixed steps
    cfg.train.save_every = 10 ** 9
    run = out / name
    if run.exists():
        import shutil
        shutil.rmtree(run)
    t0 = time.time()
    res = pretrain([genome], cfg, run, progress=False, echo=lambda s: None)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"name": name, "overrides": overrides, "val_bits_per_base": res.val_bits_per_base, "steps": res.step,
            "train_seconds": res.train_time, "wall_seconds": time.time() - t0,
            "tokens_per_second": res.tokens_per_second, "seq_len": cfg.data.seq_len,
            "curve": [(r["step"], r["bits_per_base"], r["kind"]) for r in rows]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", choices=sorted(STUDIES), required=True)
    ap.add_argument("--variants", help="comma list of variant names (default: all of the study)")
    ap.add_argument("--minutes", type=float, default=5.0, help="training time budget per variant")
    ap.add_argument("--steps", type=int, default=0, help="a fixed number of steps instead of a time budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()

    variants, genome = STUDIES[args.study]
    names = args.variants.split(",") if args.variants else list(variants)
    out = Path(args.out)
    runs = out / "runs" / args.study
    runs.mkdir(parents=True, exist_ok=True)
    json_path = out / f"quality_{args.study}.json"
    results = json.loads(json_path.read_text()) if json_path.is_file() else {}
    results.setdefault("variants", {})

    tok = NucleotideTokenizer()
    records = load_genome(genome, tok)
    markov = markov_holdout_table(records, range(13))
    results["genome"] = genome.name
    results["markov"] = {str(k): v for k, v in markov.items()}
    best_k = min(markov, key=markov.get)
    print(f"{genome.name}: Markov order {best_k} = {markov[best_k]:.4f} bits per base (best fixed order)")
    for name in names:
        r = run_variant(name, variants[name], genome, runs, args.minutes * 60, args.steps, args.seed)
        results["variants"][name] = r
        print(f"{name:14s} {r['val_bits_per_base']:.4f} bits/base  {r['steps']} steps  "
              f"{r['tokens_per_second']:,.0f} tok/s  ({r['train_seconds'] / 60:.1f} min)", flush=True)
        json_path.write_text(json.dumps(results, indent=1))
    write_table(results, out / f"quality_{args.study}.md", best_k, markov[best_k])
    plot(results, out / f"quality_{args.study}.png", markov[best_k], best_k)
    return 0


def write_table(results, path, best_k, best_bits):
    lines = [f"Held-out bits per base ({results['genome']}, last 10% of each record); best fixed-order "
             f"Markov model: order {best_k}, {best_bits:.4f}.", "",
             "| variant | bits per base | vs Markov | steps | tokens/s | minutes |", "|---|---|---|---|---|---|"]
    for name, r in results["variants"].items():
        lines.append(f"| {name} | {r['val_bits_per_base']:.4f} | {r['val_bits_per_base'] - best_bits:+.4f} | "
                     f"{r['steps']} | {r['tokens_per_second']:,.0f} | {r['train_seconds'] / 60:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def plot(results, path, best_bits, best_k):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in results["variants"].items():
        pts = [(s, b) for s, b, kind in r["curve"] if kind == "train"]
        if pts:
            s, b = zip(*pts)
            # smoothed training curve (running mean over 20 logged points)
            sm = [sum(b[max(0, i - 19):i + 1]) / len(b[max(0, i - 19):i + 1]) for i in range(len(b))]
            ax.plot(s, sm, lw=1, label=f"{name} ({r['val_bits_per_base']:.3f})")
    ax.axhline(best_bits, color="k", ls="--", lw=1, label=f"Markov order {best_k} ({best_bits:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("training bits per base (smoothed)")
    ax.set_ylim(best_bits - 0.1, 2.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
