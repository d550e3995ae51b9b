"""Checkpoints: safe to download, atomic to write.

A checkpoint is a folder holding ``model.safetensors`` (weights only: loading it cannot run
code) and ``config.json`` (format version, model config, tokenizer spec, and a few facts
about the run). A training run adds ``training_state.pt`` (optimizer, scheduler, step, RNG
states, data position), read with ``torch.load(weights_only=True)`` so it cannot run code
either; ``embed`` and ``evaluate`` never read it.

Writes are atomic: a checkpoint is written into a hidden temporary folder that is renamed to
its final name only when complete, and the run's pointers (``latest.json``, ``best.json``) are
replaced with ``os.replace``. A ``kill -9`` at any moment leaves either the previous state or
the new one, never a checkpoint that fails to load (the writing: :mod:`.files`). Loading a trained
model for a task, with its tokenizer: :mod:`reformer_seq.tasks.pretrained`.

Run folder layout::

    RUN/config.yaml                 resolved run config
    RUN/metrics.jsonl               one JSON object per log/validation event
    RUN/loss_curve.png
    RUN/checkpoints/step-0000100/   model.safetensors, config.json, training_state.pt
    RUN/latest.json, RUN/best.json  {"step": .., "path": "checkpoints/step-..", ...}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from ..config import ReformerConfig
from ..errors import CheckpointError
from .files import atomic_folder
from ..types import PathLike

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"


def save_checkpoint(model: torch.nn.Module, config: ReformerConfig, tokenizer_spec: dict, folder: PathLike,
                    training_state: Optional[dict] = None, meta: Optional[dict] = None) -> Path:
    """Write a checkpoint folder atomically (replacing an existing one). Returns its path."""
    from safetensors.torch import save_file

    from ..version import __version__

    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        info = {"format_version": FORMAT_VERSION, "seqformer_version": __version__,
                "model": config.to_dict(), "tokenizer": tokenizer_spec, **(meta or {})}
        (tmp / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if training_state is not None:
            torch.save(training_state, tmp / STATE_FILE)
    return folder


def _read_pointer(run: Path, name: str) -> Optional[Path]:
    p = run / name
    if not p.is_file():
        return None
    try:
        rel = json.loads(p.read_text())["path"]
    except (ValueError, KeyError, TypeError):
        return None
    target = run / rel
    return target if (target / MODEL_FILE).is_file() and (target / CONFIG_FILE).is_file() else None


# Models that ship inside the package (models/NAME/: weights, config.json and a card, CARD.md),
# named by ``--checkpoint NAME`` wherever no folder of that name exists.
SHIPPED_MODELS = ("ecoli", "human")


def shipped_model(name: str) -> Path:
    """The folder of the shipped model ``name`` (one of :data:`SHIPPED_MODELS`)."""
    from .resources import resource

    if name not in SHIPPED_MODELS:
        raise CheckpointError(f"{name!r} is not a shipped model; shipped: {', '.join(SHIPPED_MODELS)}")
    try:
        return resource("models", name, CONFIG_FILE).parent
    except Exception:
        raise CheckpointError(f"the shipped model {name!r} is missing from this installation (models/{name}/); "
                              f"reinstall seqformer, or pass a checkpoint folder") from None


def resolve_checkpoint(path: PathLike, prefer: str = "best") -> Path:
    """A checkpoint folder from a checkpoint folder, a run folder, or a shipped model's name.

    For a run folder: its best checkpoint (``prefer="best"``) or latest (``prefer="latest"``),
    falling back to the newest complete ``checkpoints/step-*`` folder. A name in
    :data:`SHIPPED_MODELS` (``ecoli``, ``human``) with no folder of that name is the shipped model.
    """
    path = Path(path)
    if not path.exists() and str(path) in SHIPPED_MODELS:
        return shipped_model(str(path))
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run folder; pass the --out folder of "
                              f"`seqformer pretrain`, one of its checkpoints/step-* folders, or a shipped "
                              f"model ({', '.join(SHIPPED_MODELS)})")
    if (path / MODEL_FILE).is_file() or (path / CONFIG_FILE).is_file():
        return path
    order = ["best.json", "latest.json"] if prefer == "best" else ["latest.json", "best.json"]
    for name in order:
        target = _read_pointer(path, name)
        if target is not None:
            return target
    steps = sorted((path / "checkpoints").glob("step-*")) if (path / "checkpoints").is_dir() else []
    steps = [s for s in steps if (s / MODEL_FILE).is_file() and (s / CONFIG_FILE).is_file()]
    if steps:
        return steps[-1]
    raise CheckpointError(f"{path}: holds no checkpoint ({MODEL_FILE} + {CONFIG_FILE}, or a run's "
                          f"checkpoints/step-* folders); train one with `seqformer pretrain --out {path}`")


def read_checkpoint_config(folder: PathLike) -> dict:
    """The checkpoint's ``config.json``, checked for version and contents."""
    folder = Path(folder)
    for name in (CONFIG_FILE, MODEL_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name}; a checkpoint folder needs {MODEL_FILE} and "
                                  f"{CONFIG_FILE} (written by `seqformer pretrain`)")
    try:
        info = json.loads((folder / CONFIG_FILE).read_text())
    except ValueError as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: not valid JSON ({e})") from None
    version = info.get("format_version") if isinstance(info, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{folder}: checkpoint format {version!r}, this seqformer reads format "
                              f"{FORMAT_VERSION}; retrain it or use the seqformer version that wrote it "
                              f"({info.get('seqformer_version', 'unknown') if isinstance(info, dict) else 'unknown'})")
    for key in ("model", "tokenizer"):
        if key not in info:
            raise CheckpointError(f"{folder / CONFIG_FILE}: has no {key!r} section; the file is incomplete")
    return info


def load_model_weights(model: torch.nn.Module, folder: PathLike, map_location: str = "cpu", prefix: str = "") -> None:
    """Load ``model.safetensors`` into ``model``, with a clear error on any mismatch. With ``prefix``,
    only the weights under it, the prefix removed (a fine-tuned model's ``backbone.``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / MODEL_FILE
    try:
        state = load_file(str(path), device=map_location)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read weights ({e}); the file is corrupt or truncated") from None
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the model in {CONFIG_FILE} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}); the checkpoint was "
                              f"made by an incompatible version")
