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
* ``final``: the default config with ``--max-time`` (the headline figure of docs/studies.md).

The context study ends with a probe that separates context from training: each trained
context model scores the *same* held-out bases (the last 1,024 of windows ending every 16K
bases, all inside the held-out split) with its input cut to 1K, 4K, 16K and 64K bases. A
model that uses distant context scores those bases better with the longer input. ``--probe``
reruns only the probe on the kept runs.

Each variant runs in this process, one after the other (``reformer_seq.tasks.training.pretrain``
with the variant's overrides); results go to ``<out>/quality_<study>.json`` and ``.md``, and
the validation curves to ``.png``. Runs are kept under ``<out>/runs/<study>/<variant>``.

Examples::

    python benchmarks/quality.py --study levers --minutes 5
    python benchmarks/quality.py --study lsh-vs-exact --steps 300
    python benchmarks/quality.py --study final --minutes 30
    python benchmarks/quality.py --study context --minutes 4   # then --probe to redo the probe only
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reformer_seq.config import load_run_config  # noqa: E402
from reformer_seq.tasks.evaluation.markov import markov_holdout_table  # noqa: E402
from reformer_seq.genome.encoded import load_genome  # noqa: E402
from reformer_seq.genome.tokenizers import NucleotideTokenizer  # noqa: E402
from reformer_seq.tasks.training import pretrain  # noqa: E402

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
# copy attention (model.copy_k) and planted repeats; configs/default.yaml has both (copy_k 12,
# the mixture, plant_repeats 0.5). Held-out bits here, recall with long_context.py. The study of
# 2026-11 also ran the copy signal added below the stack ("bottom") or above it ("top"); the
# mixture won and the other two placements were removed from the model (their figures stay in
# docs/studies.md).
COPY = {
    "no-copy": {"model": {"copy_k": 0}, "data": {"plant_repeats": 0.0}},
    "copy-mix": {},
    "copy-mix-offset": {"model": {"random_position_offset": True}},
    "copy-mix-nope": {"model": {"positions": "none"}},
    "copy-mix-no-plant": {"data": {"plant_repeats": 0.0}},
    "copy-mix-T32-fixed": {"model": {"copy_temperature": 32.0, "copy_learn_temperature": False}},
}
# reading-frame levers (issue 27): a long causal convolution, dilated taps (every third base),
# codon (3-mer) input embeddings, rotary positions in the local layer, width and depth
_OLD = {"conv_kernel": 8, "frame_conv": 0, "kmer_embedding": 0, "local_rope": False}  # the default before the study
_ALL = {"conv_kernel": 96, "frame_conv": 32, "kmer_embedding": 3, "local_rope": True}  # all four levers
FRAME = {
    "conv-8": {"model": _OLD},
    "conv-96": {"model": {**_OLD, "conv_kernel": 96}},
    "conv-96-codon": {"model": {**_OLD, "conv_kernel": 96, "kmer_embedding": 3}},
    "conv-96-codon-frame": {"model": {**_ALL, "local_rope": False}},
    "conv-96-codon-frame-rope": {"model": _ALL},
    "conv-8-codon-frame-rope": {"model": {**_ALL, "conv_kernel": 8}},
    "conv-96-rope": {"model": {**_OLD, "conv_kernel": 96, "local_rope": True}},
    "all-dim-96": {"model": {**_ALL, "dim": 96}},
    "all-depth-4": {"model": {**_ALL, "depth": 4}},
    "all-masked": {"model": {**_ALL, "copy_k": 0, "causal": False, "kmer_embedding": 0, "conv_kernel": 0,
                             "frame_conv": 0}, "data": {"plant_repeats": 0.0}, "train": {"objective": "masked"}},
}
STUDIES = {"frame": (FRAME, ECOLI), "copy": (COPY, ECOLI), "levers": (LEVERS, ECOLI), "lsh-vs-exact": (LSH_VS_EXACT, ECOLI), "context": (CONTEXT, CHRX),
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
    ap.add_argument("--probe", action="store_true",
                    help="context study only: skip training, rerun the same-bases probe on the kept runs")
    ap.add_argument("--replot", action="store_true", help="only redraw the table and plots from the study's JSON")
    args = ap.parse_args()
    if args.probe and args.study != "context":
        ap.error("--probe belongs to --study context")

    variants, genome = STUDIES[args.study]
    names = args.variants.split(",") if args.variants else list(variants)
    unknown = [n for n in names if n not in variants]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)} for --study {args.study}; choose from {', '.join(variants)}")
    probe_names = names
    if args.probe:
        names = []
    out = Path(args.out)
    runs = out / "runs" / args.study
    runs.mkdir(parents=True, exist_ok=True)
    json_path = out / f"quality_{args.study}.json"
    results = json.loads(json_path.read_text()) if json_path.is_file() else {}
    results.setdefault("variants", {})
    if args.replot:
        if not results.get("markov"):
            ap.error(f"nothing to redraw: {json_path} has no results yet")
        markov = {int(k): v for k, v in results["markov"].items()}
        best_k = min(markov, key=markov.get)
        draw(results, out, args.study, best_k, markov[best_k])
        return 0

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
    if args.study == "context":
        results["probe"] = {**results.get("probe", {}), **context_probe(records, runs, probe_names)}
        json_path.write_text(json.dumps(results, indent=1))
    draw(results, out, args.study, best_k, markov[best_k])
    return 0


def draw(results, out: Path, study: str, best_k: int, best_bits: float) -> None:
    """The study's Markdown table and plots (and, for the context study, the context-length plot)."""
    write_table(results, out / f"quality_{study}.md", best_k, best_bits)
    plot(results, out / f"quality_{study}.png", best_bits, best_k)
    if study == "context" and results["variants"]:
        plot_context(results, out / "quality_context_length.png", best_bits, best_k)


PROBE_CONTEXTS = (1024, 4096, 16384, 65536)
PROBE_TARGETS = 1024  # scored bases at the end of each probe window
PROBE_STEP = 16384  # probe windows end every PROBE_STEP bases of the held-out split


def context_probe(records, runs: Path, names: list[str], val_fraction: float = 0.1) -> dict:
    """Bits per base on fixed held-out bases with the input cut to each context length.

    For every window end ``e`` (every ``PROBE_STEP`` bases, so that a 64K window ending there
    lies inside the held-out split), the targets are ``ids[e - PROBE_TARGETS + 1 : e]`` and the
    input is ``ids[e - c : e - 1]`` for each context ``c``: the same bases, scored with at least
    ``c - PROBE_TARGETS`` bases of context. Models only see contexts up to their training length.
    Returns ``{variant: {"trained_on": L, "bits_per_base": {c: bits}, "n_bases": n, "change_vs_1K":
    {c: {"delta", "stderr"}}}}``: the paired change in bits per base against the shortest context,
    with its standard error across windows.
    """
    import numpy as np

    from reformer_seq.tasks.evaluation.likelihood import ModelScorer, is_base
    from reformer_seq.tasks.evaluation.markov import split_segments
    from reformer_seq.model.lm import ReformerLM

    _, val = split_segments(records, val_fraction)
    ends = [(seg.ids, e) for seg in val for e in range(seg.lo + max(PROBE_CONTEXTS), seg.hi + 1, PROBE_STEP)]
    out = {}
    for name in names:
        run = runs / name
        if not (run / "latest.json").is_file():
            print(f"probe: no finished run for {name} under {run}; skipped")
            continue
        ckpt = run / json.loads((run / "latest.json").read_text())["path"]
        model = ReformerLM.from_pretrained(ckpt)
        scorer = ModelScorer(model, "causal")
        trained = CONTEXT[name]["data"]["seq_len"]
        res, per_window = {}, {}
        for c in [c for c in PROBE_CONTEXTS if c <= trained]:
            nats, n, bits_w = 0.0, 0, []
            t0 = time.time()
            for ids, e in ends:
                x = np.asarray(ids[e - c:e - 1], dtype=np.int64)[None]  # (1, c-1) input
                tgt = np.asarray(ids[e - c + 1:e], dtype=np.int64)  # (c-1,) next bases
                logp = scorer(x)[0, -(PROBE_TARGETS - 1):]  # (T-1, V) last positions
                t = tgt[-(PROBE_TARGETS - 1):]
                keep = is_base(t)
                w_nats = -float(logp[np.arange(len(t))[keep], t[keep]].sum())
                nats += w_nats
                n += int(keep.sum())
                bits_w.append(w_nats / np.log(2))
            res[str(c)] = nats / n / np.log(2)
            per_window[c] = np.array(bits_w)
            print(f"probe {name:12s} context {c // 1024:3d}K: {res[str(c)]:.4f} bits/base on {n:,} bases "
                  f"({time.time() - t0:.0f} s)", flush=True)
        # paired change against the shortest context: same windows, same bases; standard error across windows
        c0 = min(per_window)
        gain = {}
        for c, bw in per_window.items():
            d = (bw - per_window[c0]) / n * len(bw)  # per-window difference, in bits per base of the whole
            gain[str(c)] = {"delta": float(d.mean()), "stderr": float(d.std(ddof=1) / np.sqrt(len(d)))
                            if len(d) > 1 else float("nan")}
        minutes = json.loads((run / "result.json").read_text()).get("train_time", 0) / 60 \
            if (run / "result.json").is_file() else None
        out[name] = {"trained_on": trained, "train_minutes": minutes, "bits_per_base": res, "n_bases": n, "n_windows": len(ends),
                     f"change_vs_{c0 // 1024}K": gain}
    return out


def plot_context(results, path, best_bits, best_k):
    """Left: held-out bits per base of each context model; right: the same-bases probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    vs = sorted(results["variants"].values(), key=lambda r: r["seq_len"])
    minutes = sorted({round(r["train_seconds"] / 60) for r in vs})
    a1.plot([r["seq_len"] for r in vs], [r["val_bits_per_base"] for r in vs], "o-",
            label=f"seqformer, {'/'.join(map(str, minutes))} min each")
    for name, p in results.get("probe", {}).items():  # longer runs merged in from another --out
        if name not in results["variants"] and "val_bits_per_base" in p:
            a1.plot([p["trained_on"]], [p["val_bits_per_base"]], "*", ms=10, color="C4",
                    label=f"seqformer, {p['train_minutes']:.0f} min ({p['steps']} steps)")
    for r in vs:
        a1.annotate(f"{r['steps']} steps", (r["seq_len"], r["val_bits_per_base"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    a1.set_title("held-out split, each model at its training length", fontsize=9)
    a1.set_xlabel("context (training and evaluation window), bases")
    a1.set_ylabel("bits per base")
    for name, p in results.get("probe", {}).items():
        cs = sorted(int(c) for c in p["bits_per_base"])
        minutes = p.get("train_minutes")
        a2.plot(cs, [p["bits_per_base"][str(c)] for c in cs], "o-",
                label=f"trained at {p['trained_on'] // 1024}K" + (f", {minutes:.0f} min" if minutes else ""))
    a2.set_title("same held-out bases, input cut to each context", fontsize=9)
    a2.set_xlabel("context given to the model, bases")
    for a in (a1, a2):
        a.axhline(best_bits, color="k", ls="--", lw=1, label=f"Markov order {best_k}")
        a.set_xscale("log", base=2)
        a.set_xticks(PROBE_CONTEXTS, labels=[f"{c // 1024}K" for c in PROBE_CONTEXTS])
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(f"Does long context help? {results['genome']} (train first 90%, score last 10%)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    for i, (name, r) in enumerate(results["variants"].items()):
        color = f"C{i % 10}"
        train = [(s, b) for s, b, kind in r["curve"] if kind == "train" and s > 1]  # step 1 is ~3 bits
        val = [(s, b) for s, b, kind in r["curve"] if kind == "val"]
        if train:
            s, b = zip(*train)
            w = max(1, min(20, len(b) // 8))  # running mean over w logged points
            sm = [sum(b[max(0, j - w + 1):j + 1]) / len(b[max(0, j - w + 1):j + 1]) for j in range(len(b))]
            periodic = len(val) >= 3
            ax.plot(s, sm, lw=1, color=color, alpha=0.5 if periodic else 1.0, ls=":" if periodic else "-",
                    label=f"{name} train" + ("" if periodic else f" (held-out {r['val_bits_per_base']:.3f})"))
        if len(val) >= 3:
            s, b = zip(*val)
            ax.plot(s, b, "o-", ms=3, lw=1.5, color=color, label=f"{name} held-out ({r['val_bits_per_base']:.3f})")
    ax.set_title(f"{results['genome']}: training curves (running mean) and held-out bits per base", fontsize=9)
    ax.axhline(best_bits, color="k", ls="--", lw=1, label=f"Markov order {best_k} ({best_bits:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per base")
    ax.set_ylim(best_bits - 0.1, 2.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
