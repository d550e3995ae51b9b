"""Long-range recall: does the model copy from far back? (issue: long context that pays)

Two parts, both on sequence the model never trained on (the held-out last 10% of a genome):

1. **Copy recall.** ``P + S + F(d) + S'`` against ``P + C + F(d) + S'`` (reformer_seq/tasks/recall.py):
   the final m bases are scored in both; recall gain = control bits - repeat bits, per distance
   d and for direct and reverse-complement copies, mean and standard error over segments.
   ``--divergence 0,0.1,0.2`` diverges the second copy (that share of its bases substituted, each
   by another base; ``--indels`` adds short indels), the control ending with the same diverged copy.
   Beside the network: the Markov model (gains 0 by construction) and the copy-model baseline.
2. **Real repeats** (``--repeats-genome``, e.g. the human chrX slice): windows of the held-out
   split; in each, the last ``--targets`` bases are scored with the input cut to 1K / 4K / 16K /
   64K bases (the same bases for every context), and reported at all positions and at positions
   whose preceding 24 bases occurred earlier in the window (exactly, and with up to 2
   mismatches), beside Markov and the copy model, with standard errors across windows.

    python benchmarks/long_context.py --checkpoint runs/ecoli                       # part 1
    python benchmarks/long_context.py --checkpoint models/ecoli --divergence 0,0.1,0.2 \
        --distances 1024,61440 --name long_context_divergence                      # diverged copies
    python benchmarks/long_context.py --checkpoint runs/human --skip-copy \\
        --repeats-genome ../shared/data/genomes/Human_GRCh37_chrX_20-28Mb.fa.gz     # part 2

Writes ``long_context.json``, ``long_context.md`` and ``long_context.png`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reformer_seq.tasks.evaluation.likelihood import ModelScorer, is_base  # noqa: E402
from reformer_seq.tasks.evaluation.markov import MarkovModel, Segment, split_segments  # noqa: E402
from reformer_seq.genome.encoded import load_genome  # noqa: E402
from reformer_seq.model.lm import ReformerLM  # noqa: E402
from reformer_seq.tasks.recall import CopyModel, causal_bits, recall_pair, repeat_positions  # noqa: E402
from reformer_seq.tasks.tolerant_copy import TolerantCopyModel  # noqa: E402

ECOLI = REPO / "data" / "Ecoli_K12_MG1655.fasta.gz"
CONTEXTS = (1024, 4096, 16384, 65536)


def mean_se(x) -> tuple[float, float]:
    x = np.asarray(x, dtype=float)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def load_split(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Training and held-out token ids (the last 10% of each record)."""
    recs = load_genome(path)
    train, val = split_segments(recs, 0.1)
    return ([np.asarray(s.ids[s.lo:s.hi], dtype=np.int64) for s in train],
            [np.asarray(s.ids[s.lo:s.hi], dtype=np.int64) for s in val])


def fit_baselines(train: list[np.ndarray], order: int, window: int, n_windows: int = 4):
    """Markov model of ``order`` on the training split; the copy model's weights on a few training windows."""
    markov = MarkovModel.fit([Segment(t) for t in train], order)
    longest = max(train, key=len)
    starts = np.linspace(0, max(0, len(longest) - window), n_windows).astype(int)
    copy = CopyModel(markov).fit([longest[s:s + window] for s in starts])
    return markov, copy


def fit_tolerant(train: list[np.ndarray], markov, m: int, seed: int, pairs: int = 24) -> TolerantCopyModel:
    """The substitution-tolerant copy model, its weights fitted on copy tests drawn from the *training*
    split (0-30% diverged, both strands, 1K apart), never the held-out pairs it is reported on."""
    longest = max(train, key=len)
    rng = np.random.default_rng([seed, 7])
    stretches = []
    for i in range(pairs):
        pair = recall_pair(longest, m, 1024, rng, prefix=1024, reverse=bool(i % 2), divergence=0.1 * (i % 4))
        stretches.append((pair.repeat, len(pair.repeat) - pair.m, len(pair.repeat)))
        stretches.append((pair.control, len(pair.control) - pair.m, len(pair.control)))
    return TolerantCopyModel(markov).fit(stretches)


# ---------------------------------------------------------------------- part 1: copy recall
def copy_recall(scorer, held_out: np.ndarray, markov, copy, distances, m: int, segments: int, seed: int,
                prefix: int = 1024, reverse_too: bool = True, divergences=(0.0,), indel_rate: float = 0.0,
                tolerant=None, filler=None) -> dict:
    """Recall gain per (divergence, strand, distance): the network, the copy models and Markov on the same pairs."""
    rows = {}
    for div in divergences:
        for reverse in (False, True) if reverse_too else (False,):
            for d in distances:
                rng = np.random.default_rng([seed, d, int(reverse), int(round(div * 1000))])
                gains = {"model": [], "markov": [], "copy": [], "tolerant": []}
                bits = {"model_repeat": [], "model_control": []}
                t0 = time.time()
                for _ in range(segments):
                    pair = recall_pair(held_out, m, d, rng, prefix=prefix, reverse=reverse, divergence=div,
                                       indel_rate=indel_rate, filler=filler)
                    pos = np.arange(len(pair.repeat) - pair.m, len(pair.repeat))
                    rep, ctl = causal_bits(scorer, pair.repeat, pos), causal_bits(scorer, pair.control, pos)
                    gains["model"].append(ctl.mean() - rep.mean())
                    bits["model_repeat"].append(rep.mean())
                    bits["model_control"].append(ctl.mean())
                    lr, _ = markov.score(pair.repeat, pos)
                    lc, _ = markov.score(pair.control, pos)
                    gains["markov"].append(float(lr.mean() - lc.mean()))
                    gains["copy"].append(copy.bits(pair.control, pos).mean() - copy.bits(pair.repeat, pos).mean())
                    if tolerant is not None:
                        gains["tolerant"].append(tolerant.bits(pair.control, pos).mean()
                                                 - tolerant.bits(pair.repeat, pos).mean())
                key = f"{'rc' if reverse else 'direct'}_{d}" + (f"_div{div:g}" if len(divergences) > 1 or div else "")
                rows[key] = {"distance": d, "reverse": reverse, "prefix": prefix, "divergence": div,
                             "indel_rate": indel_rate,
                             **{f"gain_{k}": mean_se(v) for k, v in gains.items() if v},
                             **{k: mean_se(v) for k, v in bits.items()}}
                g, se = rows[key]["gain_model"]
                print(f"copy {'rc    ' if reverse else 'direct'} d={d:>7,} div={div:.2f}: model gain {g:.3f} +/- "
                      f"{se:.3f} bits/base (copy model {rows[key]['gain_copy'][0]:.3f}, tolerant "
                      f"{rows[key].get('gain_tolerant', (float('nan'),))[0]:.3f}, Markov "
                      f"{rows[key]['gain_markov'][0]:.3f}) [{time.time() - t0:.0f} s]", flush=True)
    return rows


# ---------------------------------------------------------------------- part 2: real repeats
def bits_with_context(scorer, ids: np.ndarray, lo: int, hi: int, context: int) -> np.ndarray:
    """-log2 p of ids[lo:hi], each base scored from at least ``context // 2`` and at most ``context``
    bases before it (one pass when the block fits in half the context)."""
    out = np.empty(hi - lo)
    step = max(1, min(hi - lo, context // 2))
    for s in range(lo, hi, step):
        e = min(hi, s + step)
        a = max(0, e - context)
        out[s - lo:e - lo] = causal_bits(scorer, ids[a:e], np.arange(s - a, e - a))
    return out


def real_repeats(scorer, held_out: list[np.ndarray], markov, copy, window: int, targets: int,
                 max_windows: int) -> dict:
    contexts = [c for c in CONTEXTS if c <= window]
    wins = [(r, e) for r in held_out for e in range(window, len(r) + 1, window)][:max_windows]
    per = {"all": {c: [] for c in contexts}, "exact": {c: [] for c in contexts}, "mm2": {c: [] for c in contexts}}
    base = {"all": {"markov": [], "copy": []}, "exact": {"markov": [], "copy": []}, "mm2": {"markov": [], "copy": []}}
    counts = {"all": 0, "exact": 0, "mm2": 0}
    for wi, (rec, e) in enumerate(wins):
        ids = rec[e - window:e]
        lo = window - targets
        pos = np.arange(lo, window)
        keep = is_base(ids[pos])
        marks = {"all": keep, "exact": keep & repeat_positions(ids, 24, 0)[pos],
                 "mm2": keep & repeat_positions(ids, 24, 2)[pos]}
        t0 = time.time()
        bits = {c: bits_with_context(scorer, ids, lo, window, c) for c in contexts}
        lp, _ = markov.score(ids, pos[keep])
        mk = np.full(len(pos), np.nan)
        mk[keep] = -lp
        cp = np.full(len(pos), np.nan)
        cp[keep] = copy.bits(ids, pos[keep])
        for name, sel in marks.items():
            counts[name] += int(sel.sum())
            for c in contexts:
                per[name][c].append((bits[c][sel].sum(), int(sel.sum())))
            base[name]["markov"].append((mk[sel].sum(), int(sel.sum())))
            base[name]["copy"].append((cp[sel].sum(), int(sel.sum())))
        print(f"window {wi + 1}/{len(wins)}: {int(marks['exact'].sum())} exact / {int(marks['mm2'].sum())} "
              f"<=2-mismatch repeat positions of {int(keep.sum())} [{time.time() - t0:.0f} s]", flush=True)

    def pooled(rows):  # bits per base over the bases of all windows
        s = np.array([r[0] for r in rows], float)
        n = np.array([r[1] for r in rows], float)
        return float(s.sum() / max(n.sum(), 1))

    def paired(name, c):  # change against the shortest input on the same bases; SE across windows
        a, b = per[name][c], per[name][contexts[0]]
        n = np.array([r[1] for r in a], float)
        diff = np.array([r[0] for r in a]) - np.array([r[0] for r in b])  # summed bits per window
        ok = n > 0
        mean = float(diff[ok].sum() / max(n[ok].sum(), 1))
        d = diff[ok] / n[ok]
        return mean, float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")

    out = {"window": window, "targets_per_window": targets, "windows": len(wins), "counts": counts, "rows": {}}
    for name in per:
        out["rows"][name] = {"model": {str(c): pooled(per[name][c]) for c in contexts},
                             "change_vs_1K": {str(c): paired(name, c) for c in contexts},
                             "markov": pooled(base[name]["markov"]), "copy_model": pooled(base[name]["copy"])}
    return out


# ---------------------------------------------------------------------- report
def markdown(res: dict) -> str:
    lines = [f"# Long-range recall ({res['checkpoint']})", ""]
    if "copy" in res:
        lines += [f"Copy recall on the held-out split of `{res['genome']}`: m = {res['m']} bases, "
                  f"{res['segments']} segments per cell; gain = control - repeat bits/base (mean +/- SE).", "",
                  "| copy | divergence | distance | model gain | copy-model gain | tolerant copy-model gain | "
                  "Markov gain | model bits (repeat / control) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in res["copy"].values():
            g, se = r["gain_model"]
            div = f"{r.get('divergence', 0.0):.0%}"
            if r.get("indel_rate"):
                div += f" + indels {r['indel_rate']:.0%}"
            lines.append(f"| {'reverse complement' if r['reverse'] else 'direct'} | {div} | {r['distance']:,} | "
                         f"**{g:.3f} +/- {se:.3f}** | {r['gain_copy'][0]:.3f} +/- {r['gain_copy'][1]:.3f} | "
                         + (f"{r['gain_tolerant'][0]:.3f} +/- {r['gain_tolerant'][1]:.3f} | " if "gain_tolerant" in r
                            else "- | ")
                         + f"{r['gain_markov'][0]:.3f} | {r['model_repeat'][0]:.3f} / {r['model_control'][0]:.3f} |")
        lines.append("")
    if "repeats" in res:
        rr = res["repeats"]
        cs = list(next(iter(rr["rows"].values()))["model"])
        lines += [f"Real repeats in `{res['repeats_genome']}` (held-out split): {rr['windows']} windows of "
                  f"{rr['window']:,} bases, the last {rr['targets_per_window']:,} scored; positions: "
                  + ", ".join(f"{k} {v:,}" for k, v in rr["counts"].items()) + ".", "",
                  "| positions | " + " | ".join(f"model, {int(c) // 1024}K input" for c in cs)
                  + f" | change {int(cs[-1]) // 1024}K vs 1K | Markov | copy model |",
                  "|---|" + "---|" * (len(cs) + 3)]
        for name, row in rr["rows"].items():
            d, se = row["change_vs_1K"][cs[-1]]
            lines.append(f"| {name} | " + " | ".join(f"{row['model'][c]:.3f}" for c in cs)
                         + f" | {d:+.3f} +/- {se:.3f} | {row['markov']:.3f} | {row['copy_model']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    """Recall gain against distance (one line per divergence), one panel per strand; the copy model dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(res.get("copy", {}).values())
    strands = [rev for rev in (False, True) if any(r["reverse"] == rev for r in rows)]
    divs = sorted({r.get("divergence", 0.0) for r in rows})
    fig, axes = plt.subplots(1, len(strands), figsize=(6.0 * len(strands), 5.4), sharey=True, squeeze=False)
    for ax, rev in zip(axes[0], strands):
        for i, div in enumerate(divs):
            sel = sorted((r for r in rows if r["reverse"] == rev and r.get("divergence", 0.0) == div),
                         key=lambda r: r["distance"])
            d = [r["distance"] for r in sel]
            for key, label, style in (("gain_model", "seqformer", "o-"), ("gain_copy", "copy model", "s--"),
                                      ("gain_tolerant", "tolerant copy model", "^:")):
                if key not in sel[0]:
                    continue
                ax.errorbar(d, [r[key][0] for r in sel], yerr=[r[key][1] for r in sel], fmt=style, color=f"C{i}",
                            label=f"{label}, {div:.0%} diverged", capsize=3, alpha=1.0 if key == "gain_model" else 0.6)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("distance between the copies (bases)")
        ax.set_title(f"{'reverse-complement' if rev else 'direct'} copies")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    axes[0][0].set_ylabel("recall gain (bits/base)")
    fig.suptitle(f"Copy recall on held-out sequence ({Path(str(res['checkpoint'])).name}; Markov gains 0)", fontsize=9)
    fig.tight_layout(rect=(0, 0.06 + 0.025 * len(divs), 1, 1))
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="run or checkpoint folder")
    ap.add_argument("--genome", default=str(ECOLI), help="copy recall: genome whose held-out 10%% is used")
    ap.add_argument("--distances", default="1024,8192,30720,61440")
    ap.add_argument("--m", type=int, default=512)
    ap.add_argument("--prefix", type=int, default=1024,
                    help="bases before the first copy (a long prefix tests the copy at a late absolute position)")
    ap.add_argument("--direct-only", action="store_true", help="skip the reverse-complement copies")
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--divergence", default="0",
                    help="comma-separated substitution rates of the second copy, e.g. 0,0.1,0.2 (the control "
                         "ends with the same diverged copy)")
    ap.add_argument("--indels", type=float, default=0.0,
                    help="short indels (1-3 bases) per base of the second copy, on top of the substitutions")
    ap.add_argument("--markov-order", type=int, default=6)
    ap.add_argument("--skip-copy", action="store_true", help="only the real-repeat part")
    ap.add_argument("--repeats-genome", help="real repeats: genome whose held-out 10%% is scored")
    ap.add_argument("--repeats-markov-order", type=int, default=8)
    ap.add_argument("--window", type=int, default=65536)
    ap.add_argument("--targets", type=int, default=4096)
    ap.add_argument("--max-windows", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--name", default="long_context")
    ap.add_argument("--replot", metavar="JSON", help="only redraw the PNG beside an earlier run's JSON")
    ap.add_argument("--far-filler", action="store_true",
                    help="draw the filler F from the training split (never scored), for distances the held-out "
                         "10%% cannot hold four times over (250K, 1M on E. coli)")
    ap.add_argument("--max-seq-len", type=int, default=None,
                    help="score longer inputs than the checkpoint's max_seq_len (a model without absolute "
                         "positions, positions: none, runs at any length)")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), Path(args.replot).with_suffix(".png"))
        return 0

    longer = {"max_seq_len": args.max_seq_len} if args.max_seq_len else {}
    model = ReformerLM.from_pretrained(args.checkpoint, **longer)
    scorer = ModelScorer(model, "causal")
    res = {"checkpoint": args.checkpoint, "genome": args.genome, "m": args.m, "segments": args.segments}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_copy:
        train, val = load_split(Path(args.genome))
        dists = [d for d in (int(x) for x in args.distances.split(","))
                 if args.prefix + 2 * args.m + d <= scorer.max_len]
        markov, copy = fit_baselines(train, args.markov_order, 65536)
        res["copy_baseline_weights"] = copy.weights
        tolerant = fit_tolerant(train, markov, args.m, args.seed)
        res["tolerant_weights"] = tolerant.weights.tolist()
        res["copy"] = copy_recall(scorer, max(val, key=len), markov, copy, dists, args.m, args.segments, args.seed,
                                  args.prefix, not args.direct_only,
                                  [float(x) for x in args.divergence.split(",")], args.indels, tolerant,
                                  max(train, key=len) if args.far_filler else None)
    if args.repeats_genome:
        train, val = load_split(Path(args.repeats_genome))
        window = min(args.window, scorer.max_len)
        markov, copy = fit_baselines(train, args.repeats_markov_order, window)
        res["repeats_genome"] = args.repeats_genome
        res["repeats"] = real_repeats(scorer, val, markov, copy, window, args.targets, args.max_windows)
    for suffix, text in (("json", json.dumps(res, indent=1, default=float)), ("md", markdown(res))):
        tmp = out / f"{args.name}.{suffix}.tmp"
        tmp.write_text(text)
        tmp.replace(out / f"{args.name}.{suffix}")
    if "copy" in res:
        plot(res, out / f"{args.name}.png")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
