#!/usr/bin/env python
"""Ship a trained model inside the package: ``models/NAME/`` gets the run's best checkpoint
(weights and config.json; no optimizer state), ``recorded.json`` (bits per base on a small fixed
slice of the held-out split, which ``tests/runtime/test_shipped_models.py`` reproduces) and ``CARD.md``
(data, config, training time, held-out figures, the command that re-trains it).

``--checkpoint NAME`` then names it in every command (``reformer_seq.runtime.checkpoint.SHIPPED_MODELS``).

Example::

    python benchmarks/ship_model.py --run runs/ecoli30 --name ecoli --genome data/Ecoli_K12_MG1655.fasta.gz \\
        --retrain "seqformer pretrain --max-time 1800 --out runs/ecoli30" --figures figures.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reformer_seq.genome.encoded import EncodedRecord, load_genome  # noqa: E402
from reformer_seq.runtime.checkpoint import CONFIG_FILE, MODEL_FILE, resolve_checkpoint  # noqa: E402

SLICE_BASES = 20_000  # the recorded figure's slice: the first bases of the first record's held-out split
SLICE_WINDOW = 4096


def held_out_slice(genome: Path, val_fraction: float = 0.1, n: int = SLICE_BASES,
                   bounds: Optional[tuple[int, int]] = None) -> tuple[EncodedRecord, int, int]:
    """Bases ``bounds`` of the first record (default: the first ``n`` of its held-out last
    ``val_fraction``), as a record. A file that is itself a held-out piece takes ``bounds=(0, n)``."""
    rec = load_genome(genome)[0]
    if bounds is None:
        start = len(rec) - int(round(len(rec) * val_fraction))
        bounds = (start, min(len(rec), start + n))
    start, end = bounds
    return EncodedRecord(rec.id, rec.description, rec.ids[start:end].copy()), start, end


def slice_bits(checkpoint, genome: Path, bounds: Optional[tuple[int, int]] = None) -> dict:
    """Bits per base of ``checkpoint`` on the recorded slice (causal, 4,096-base windows)."""
    from reformer_seq.tasks.evaluation.likelihood import ModelScorer, likelihood
    from reformer_seq.tasks.pretrained import load_pretrained

    model, _, _ = load_pretrained(checkpoint)
    rec, start, end = held_out_slice(genome, bounds=bounds)
    res = likelihood([rec], ModelScorer(model.eval()), window=SLICE_WINDOW, progress=False)
    return {"genome": genome.name, "record": rec.id, "start": start, "end": end, "window": SLICE_WINDOW,
            "n_bases": res.n_bases, "bits_per_base": res.bits_per_base}


def write_card(dest: Path, name: str, info: dict, figures: dict, recorded: dict, retrain: str) -> None:
    m, td, tr = info["model"], info.get("train_data", {}), info.get("training", {})
    lines = [f"# seqformer model `{name}`", "",
             f"Load it with `--checkpoint {name}` in any command, or `ReformerLM.from_pretrained(\"{name}\")`.", "",
             "## Data", f"- trained on: {', '.join(Path(p).name for p in td.get('paths', []))} "
             f"(all but the last {td.get('val_fraction', 0.1):g} of each record; that part is held out)",
             f"- window: {td.get('seq_len')} bases", "",
             "## Model",
             f"- dim {m['dim']}, depth {m['depth']}, heads {m['heads']}, layers {m.get('attn_layers')}, "
             f"conv {m.get('conv_kernel')}, frame conv {m.get('frame_conv', 0)}, k-mer embedding "
             f"{m.get('kmer_embedding', 0)}, local rope {m.get('local_rope', False)}, copy k {m.get('copy_k')}",
             f"- parameters: {figures.get('parameters', 'n/a')}", "",
             "## Training", f"- {figures.get('steps', tr.get('steps', '?'))} optimizer steps; training time "
             f"{figures.get('train_minutes', '?')}", f"- re-train: `{retrain}`", "",
             "## Held-out figures"]
    lines += [f"- {k}: {v}" for k, v in figures.items() if k not in ("parameters", "train_minutes", "steps")]
    lines += [f"- recorded slice ({recorded['genome']} {recorded['record']}:{recorded['start']}-{recorded['end']}, "
              f"window {recorded['window']}): {recorded['bits_per_base']:.5f} bits/base "
              f"(reproduced by tests/runtime/test_shipped_models.py)", ""]
    (dest / "CARD.md").write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder (its best checkpoint) or checkpoint folder")
    ap.add_argument("--name", required=True)
    ap.add_argument("--genome", required=True, type=Path, help="the FASTA the recorded slice is cut from")
    ap.add_argument("--retrain", required=True, help="the command that re-trains it, for the card")
    ap.add_argument("--figures", type=Path, help="JSON of held-out figures for the card")
    ap.add_argument("--whole-file", action="store_true",
                    help="--genome is itself a held-out piece (in data/): record its first 20,000 bases")
    args = ap.parse_args()
    ck = resolve_checkpoint(args.run)
    dest = ROOT / "models" / args.name
    dest.mkdir(parents=True, exist_ok=True)
    for f in (MODEL_FILE, CONFIG_FILE):
        shutil.copyfile(ck / f, dest / f)
    info = json.loads((dest / CONFIG_FILE).read_text())
    recorded = slice_bits(dest, args.genome, (0, SLICE_BASES) if args.whole_file else None)
    (dest / "recorded.json").write_text(json.dumps(recorded, indent=1) + "\n")
    figures = json.loads(args.figures.read_text()) if args.figures else {}
    write_card(dest, args.name, info, figures, recorded, args.retrain)
    print(f"{dest}: {(dest / MODEL_FILE).stat().st_size / 1e6:.2f} MB; slice {recorded['bits_per_base']:.5f} bits/base")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
