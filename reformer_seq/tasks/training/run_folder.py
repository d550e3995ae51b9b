"""The run folder of ``seqformer pretrain`` and ``seqformer finetune``: its file names, the resolved
config (YAML), the metrics log and its loss-curve plot, the ``latest.json``/``best.json`` pointers
and the pruning of old checkpoints; the genomes and config of a pretraining run (a resumed run's
come from its folder), and the genome a run trains on when none is given.

A run folder holds its settings (pretraining: ``config.yaml`` and ``run.json``, the FASTA paths
and the number of processes; fine-tuning: ``finetune.json``, the inputs, pretrained model,
options and head), ``metrics.jsonl`` (one JSON row per logged step or validation),
``loss_curve.png``, ``checkpoints/step-NNNNNNN`` (see :mod:`reformer_seq.runtime.checkpoint`),
``latest.json`` and ``best.json`` (pointers to checkpoints) and, when the run ends, ``result.json``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional, Sequence

from ...config import RunConfig, load_run_config
from ...errors import CheckpointError, ConfigError
from ...genome.inputs import expand_sequence_inputs
from ...runtime.files import atomic_write, atomic_write_json, atomic_write_text
from ...runtime.resources import resource

DEFAULT_GENOME = "Ecoli_K12_MG1655.fasta.gz"


def default_genome() -> Path:
    """The genome ``seqformer pretrain`` trains on when no FASTA is given (E. coli K-12 MG1655,
    shipped with the package: :mod:`reformer_seq.runtime.resources`)."""
    return resource("data", DEFAULT_GENOME)


class RunFiles:
    """The paths of a run folder's files."""

    def __init__(self, root: Path):
        self.root = root
        self.config = root / "config.yaml"  # the resolved run config
        self.run = root / "run.json"  # the FASTA paths and the number of processes
        self.finetune = root / "finetune.json"  # a fine-tuning run's inputs, pretrained model, options and head
        self.metrics = root / "metrics.jsonl"  # one JSON row per logged step or validation
        self.plot = root / "loss_curve.png"
        self.checkpoints = root / "checkpoints"  # step-NNNNNNN folders
        self.result = root / "result.json"  # the TrainResult, less the history

    def has_checkpoints(self) -> bool:
        return self.checkpoints.is_dir() and any(self.checkpoints.glob("step-*"))

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:07d}"


def run_inputs(fasta: Sequence[str | Path], config: RunConfig, files: RunFiles, resume: bool
               ) -> tuple[list[Path], RunConfig]:
    """The genomes and config of a run: for a resumed run its saved config (with ``config``'s
    ``max_steps`` and ``max_time``, so a finished run can be extended) and, when none are given,
    its genomes; for a new one ``fasta`` or the default genome."""
    run = files.root
    if resume:
        if not files.has_checkpoints():
            raise CheckpointError(f"{run}: nothing to resume (no checkpoints/step-* folder); start a new run "
                                  f"without --resume")
        saved = load_run_config(files.config)
        saved.train.max_steps, saved.train.max_time = config.train.max_steps, config.train.max_time
        config = saved
        if not fasta:
            fasta = json.loads(files.run.read_text())["fasta"]
    elif files.has_checkpoints():
        raise ConfigError(f"{run}: already holds a run's checkpoints; pass --resume to continue it, or choose "
                          f"another --out")
    return expand_sequence_inputs(fasta) or [default_genome()], config


def write_config(path: Path, config: dict) -> None:
    """The resolved run config as commented YAML, written atomically."""
    import yaml

    atomic_write_text(path, "# resolved run config written by seqformer pretrain\n"
                            + yaml.safe_dump(config, sort_keys=False))


def append_metrics(path: Path, row: dict) -> None:
    """One row (a JSON object) at the end of ``metrics.jsonl``."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows written after ``step`` (by a run that died after its last checkpoint)."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def point_to_checkpoint(run: Path, folder: Path, step: int, is_best: bool, **scores: Optional[float]) -> None:
    """``latest.json`` points at ``folder``; ``best.json`` too if it is the best so far (or the first).
    ``scores`` (e.g. ``val_bits_per_base``) are written into the pointer."""
    pointer = {"step": step, "path": f"checkpoints/{folder.name}", **scores}
    atomic_write_json(run / "latest.json", pointer)
    if is_best or not (run / "best.json").is_file():
        atomic_write_json(run / "best.json", pointer)


def prune_checkpoints(run: Path, keep_last: int) -> None:
    """Delete ``checkpoints/step-*`` folders but the last ``keep_last`` and those ``best.json`` and
    ``latest.json`` point at, and the leftovers of killed writes."""
    steps = sorted((run / "checkpoints").glob("step-*"))
    keep = set(steps[-keep_last:]) if keep_last > 0 else set()
    for name in ("best.json", "latest.json"):
        p = run / name
        if p.is_file():
            try:
                keep.add(run / json.loads(p.read_text())["path"])
            except (ValueError, KeyError):
                pass
    for s in steps:
        if s not in keep:
            shutil.rmtree(s, ignore_errors=True)
    for tmp in (run / "checkpoints").glob(".step-*"):  # leftovers of a killed write
        shutil.rmtree(tmp, ignore_errors=True)


def plot_loss_curve(metrics_path: Path, png_path: Path, train_key: str = "bits_per_base",
                    val_key: str = "bits_per_base") -> None:
    """The train rows' ``train_key`` (thin) and the val rows' ``val_key`` (dots) against step,
    on one axis when they are the same figure (bits per base), else the validation figure on a
    second axis; written atomically."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no process-wide backend switch

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r[train_key]) for r in rows if r.get("kind") == "train" and r.get(train_key) is not None]
    val = [(r["step"], r[val_key]) for r in rows if r.get("kind") == "val" and r.get(val_key) is not None]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.5, label="train")
    ax.set_xlabel("step")
    ax.set_ylabel(train_key.replace("_", " ") if train_key == val_key else f"training {train_key}")
    if train_key == val_key:
        if val:
            ax.plot(*zip(*val), "o-", label="validation")
        values = [b for _, b in val] + [b for _, b in train[len(train) // 10:]]
        if values:  # the first steps' large losses would flatten everything else
            ax.set_ylim(min(values) - 0.02, max(values) + 0.05)
        ax.legend()
    else:
        ax2 = ax.twinx()
        if val:
            ax2.plot(*zip(*val), "o-", color="C1", label=f"validation {val_key}")
        ax2.set_ylabel(f"validation {val_key}")
        fig.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), suffix=".png")
