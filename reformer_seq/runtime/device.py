"""Device and precision: the one resolver for ``--device`` and the one autocast helper.

Every task (training, embedding, evaluation, scoring, fine-tuning) takes a device name and a
precision from the user and goes through here, so they accept the same names and fail the same
way: a :class:`~reformer_seq.errors.ConfigError` that says what to pass instead.
"""
from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
DEVICE_HELP = "use auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as given,
    checked against what this machine has."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device; {DEVICE_HELP}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r} is not supported; {DEVICE_HELP}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA GPU is visible to torch {torch.__version__}; "
                          f"use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                          f"numbered from 0")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} requested but Apple's MPS backend is not available here; use --device cpu")
    return dev


def autocast(device: torch.device, precision: str):
    """The context for running at ``precision``: ``fp32`` turns autocast off (also inside an
    outer autocast), ``bf16`` and ``fp16`` turn it on with that dtype. fp16 needs CUDA (its
    training relies on a gradient scaler)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        if device.type == "mps":  # no autocast on MPS in older torch: nothing to turn off
            return contextlib.nullcontext()
        return torch.autocast(device.type, enabled=False)
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device (it relies on a gradient scaler); use bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
