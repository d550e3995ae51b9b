"""The evaluation report: ``report.json``, ``report.md`` and one motif profile PNG per motif.

:func:`write_report` writes each file atomically (:mod:`reformer_seq.runtime.files`);
:func:`report_markdown` renders the summary and a table per section (likelihood against the Markov
baselines, motif masking); :func:`plot_profile` draws a motif's per-position site accuracy beside
its information content.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ...runtime.files import atomic_write, atomic_write_json, atomic_write_text
from ...types import PathLike


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "motif"


def plot_profile(result: dict[str, Any], path: PathLike) -> Path:
    """A PNG of per-position site accuracy against information content for one motif result."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no process-wide backend switch

    path = Path(path)
    pp = result["per_position"]
    ic = np.asarray(pp["information_content"])
    x = np.arange(1, len(ic) + 1)
    fig = Figure(figsize=(max(5.0, 0.4 * len(ic) + 2.5), 3.6), dpi=110)
    ax = fig.subplots()
    ax2 = ax.twinx()
    ax2.bar(x, ic, color="#c8d6e5", width=0.8, label="information content (bits)", zorder=1)
    ax2.set_ylabel("information content (bits)")
    ax2.set_ylim(0, max(2.0, float(ic.max()) * 1.05 if ic.size else 2.0))
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    if pp["site_accuracy"] is not None:
        ax.plot(x, pp["site_accuracy"], "o-", color="#c0392b", label="site accuracy", zorder=3)
    if result.get("control_accuracy") is not None:
        ax.axhline(result["control_accuracy"], color="#2c3e50", ls="--", lw=1, label="control accuracy")
    ax.axhline(0.25, color="grey", ls=":", lw=1, label="chance (0.25)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0.4, len(ic) + 0.6)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{i}\n{c}" for i, c in zip(x, result.get("consensus", ""))] if result.get("consensus")
                       else [str(i) for i in x], fontsize=7)
    ax.set_xlabel("motif position (consensus)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(f"{result['id']} {result['name']}  (n = {result['n_evaluated']} sites)", fontsize=10)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper right", framealpha=0.8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    return path


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2e}" if (v != 0 and abs(v) < 10 ** -digits) else f"{v:.{digits}f}"
    return str(v)


def report_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the summary and a table per section."""
    lines = ["# seqformer evaluation", "",
             f"- FASTA: `{report['fasta']}` ({report['n_records']} record{'s' if report['n_records'] != 1 else ''}"
             + (f"; {report['split']} region, val_fraction {report['val_fraction']:g})"
                if report.get("split", "all") != "all" else ")"),
             f"- checkpoint: `{report['checkpoint']}` (step {report.get('checkpoint_step')}, objective "
             f"{report['objective']})", f"- window: {report['window']} bases",
             f"- bases skipped as N (assembly gaps, ambiguity codes): {report.get('n_skipped_n', 0):,}", ""]
    lines += ["## Likelihood", "", "| model | bases | bits/base | top-1 accuracy |", "|---|---:|---:|---:|"]
    if report["objective"] == "causal":
        lines.append(f"| this model | {report['n_bases']:,} | {_fmt(report['bits_per_base'])} | "
                     f"{_fmt(report['accuracy'])} |")
    else:
        lines.append(f"| this model (masked {report['mask_prob']:g}) | {report['n_bases']:,} | "
                     f"{_fmt(report['masked_bits_per_base'])} | {_fmt(report['masked_accuracy'])} |")
    b = report.get("baselines") or {}
    if "order0" in b:
        lines.append(f"| composition (order 0) | {b['order0']['n_bases']:,} | {_fmt(b['order0']['bits_per_base'])} | "
                     f"{_fmt(b['order0']['accuracy'])} |")
    if "markov" in b:
        lines.append(f"| Markov order {b['markov']['order']} | {b['markov']['n_bases']:,} | "
                     f"{_fmt(b['markov']['bits_per_base'])} | {_fmt(b['markov']['accuracy'])} |")
    g = b.get("gene_hmm") or {}
    if g.get("bits_per_base") is not None:
        lines.append(f"| gene HMM ({g['n_states']} states, order {g['order']}; {g['fitted_on']}) | {g['n_bases']:,} | "
                     f"{_fmt(g['bits_per_base'])} | {_fmt(g['accuracy'])} |")
    lines.append("")
    fitted = (b.get("markov") or b.get("order0") or {}).get("fitted_on")
    if fitted:
        lines.append(f"Baselines are scored on the same bases as the model, fitted on {fitted}" +
                     ("; Markov order chosen on the validation region (bits per order: "
                      + ", ".join(f"k={k}: {v:.4f}" for k, v in b["markov"]["val_bits_per_base_by_order"].items())
                      + ")." if "markov" in b else "."))
        if "markov" in b and report.get("split") == "val":
            lines.append("That validation region is the one scored here, so the Markov order is chosen on the "
                         "scored bases: the baseline is slightly optimistic, in its favour.")
    if b.get("note"):
        lines.append(b["note"] + ".")
    if g.get("note"):
        lines.append(g["note"] + ".")
    elif g:
        lines.append(f"The gene HMM (frame and strand inferred, in-frame stops forbidden) is fitted on the train "
                     f"region with {g['n_training_genes']:,} genes ({g['fitted_on']}).")
    lines.append("")
    motifs = report.get("motifs") or []
    if motifs:
        ms = report.get("motif_settings", {})
        lines += ["## Motif masking", "",
                  f"Threshold {ms.get('threshold')}, pseudocount {ms.get('pseudocount')}, background "
                  f"{ms.get('background')}, window {ms.get('motif_window')} bases, at most {ms.get('max_sites')} "
                  f"sites per motif.", "",
                  "| motif | name | sites | evaluated | site acc | control acc | site bits | control bits | "
                  "true>shuffled | p-value | profile |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for m in motifs:
            prof = f"[png]({m['profile_png']})" if m.get("profile_png") else "–"
            lines.append(f"| {m['id']} | {m['name']} | {m['n_sites']} | {m['n_evaluated']} | "
                         f"{_fmt(m['site_accuracy'])} | "
                         f"{_fmt(m['control_accuracy'])} | {_fmt(m['site_bits_per_base'])} | "
                         f"{_fmt(m['control_bits_per_base'])} | {_fmt(m['true_vs_shuffled_win_rate'])} | "
                         f"{_fmt(m['p_value'])} | {prof} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: PathLike) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``profiles/<motif>.png`` (each atomically)."""

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot create the report folder ({e.strerror}); choose another --out") from None
    written: dict[str, Path] = {}
    for m in report.get("motifs", []):
        m.pop("_sites", None)
        if m.get("n_evaluated"):
            rel = Path("profiles") / f"{_safe_name(m['id'] + '_' + m['name'])}.png"
            plot_profile(m, out / rel)
            m["profile_png"] = str(rel)
            written[m["id"]] = out / rel
        else:
            m["profile_png"] = None
    atomic_write_json(out / "report.json", _jsonable(report))
    atomic_write_text(out / "report.md", report_markdown(report))
    written["report.json"], written["report.md"] = out / "report.json", out / "report.md"
    return written


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x
