"""Typed, commented configuration: the model, the data and the training run.

Each config is a dataclass. ``from_dict`` builds one from a plain mapping (a YAML section),
rejecting unknown keys with a message that names the key and the closest valid one, and
checking value types. ``load_run_config`` reads a YAML file with ``model:``, ``data:`` and
``train:`` sections. Validation that needs several fields at once lives in ``__post_init__``
and raises :class:`~reformer_seq.errors.ConfigError` (a ``ValueError``) that says the fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, TypeVar

from .errors import ConfigError

ATTENTION_KINDS = ("lsh", "full", "local")


def _fmt(n: int) -> str:
    return f"{n:,}"


def factor_axial(max_seq_len: int) -> tuple[int, int]:
    """The most square factorisation ``(a, b)`` with ``a * b == max_seq_len`` and ``a <= b``."""
    a = int(math.isqrt(max_seq_len))
    while a > 1 and max_seq_len % a:
        a -= 1
    return a, max_seq_len // a


N = TypeVar("N", int, float)


def _pair(values: Any, key: str, kind: type[N]) -> tuple[N, N]:
    """``values`` (a list from YAML, or a tuple) as a tuple of two ``kind``; any other length is a
    ConfigError naming ``key`` (``from_dict`` checks YAML; this covers configs built in Python)."""
    items = tuple(values)
    if len(items) != 2:
        raise ConfigError(f"{key} must have 2 values, got {list(items)}")
    return kind(items[0]), kind(items[1])


@dataclass
class ReformerConfig:
    """Architecture of a :class:`~reformer_seq.model.lm.ReformerLM` (Kitaev et al., ICLR 2020)."""

    vocab_size: int = 16  # token ids are in [0, vocab_size)
    dim: int = 64  # model width
    depth: int = 2  # number of reversible blocks (attention + feed-forward each)
    heads: int = 4  # attention heads; head width is dim // heads unless dim_head is set
    dim_head: Optional[int] = None
    bucket_size: int = 16  # LSH chunk length m (section 2, "chunking"); also the causal look-back
    n_hashes: int = 4  # LSH rounds (section 2, "multi-round LSH attention")
    # LSH buckets per round. None: chosen per sequence as the power of two nearest to
    # real_length / bucket_size, so a bucket holds about one chunk on average (section 2).
    n_buckets: Optional[int] = None
    causal: bool = True  # next-token LM; False gives bidirectional attention (masked LM)
    max_seq_len: int = 65536
    # Axial positional encoding factors; their product must equal max_seq_len. None: the most
    # square factorisation (65,536 -> (256, 256); 1,048,576 -> (1024, 1024)).
    axial_shape: Optional[tuple[int, int]] = None
    reversible: bool = True  # RevNet execution (section 3); same parameters either way
    attention: str = "lsh"  # default kind of every layer: lsh | full | local
    # Per-layer pattern, repeated to depth, e.g. ["local", "lsh"]. None: every layer is `attention`.
    attn_layers: Optional[list[str]] = None
    local_window: int = 64  # local attention: each query sees this many previous positions
    ff_mult: int = 4  # feed-forward hidden width = ff_mult * dim
    # Feed-forward runs over this many positions at a time (section 3). 0 = auto: 4096 while
    # B * L * dim < 2**25 (smaller hidden buffers are reused from the heap: less memory at 64K
    # tokens), 16384 above (fewer, larger buffers where freed ones go back to the OS).
    ff_chunk_size: int = 0
    # Short depthwise causal convolution over the embeddings (kernel width; 0 disables): gives
    # every position its immediate left context (k-mer features) before any attention.
    conv_kernel: int = 0
    # A second depthwise causal convolution with dilation 3 (this many taps, so 3x as many bases):
    # each channel sums one codon position over the last codons, the statistic a reading frame
    # is inferred from. 0 disables it.
    frame_conv: int = 0
    # Embed the k-mer ending at each position (k = 3: codons; 4**k + 1 rows, the last for a
    # k-mer with N, padding or the sequence start in it), added to the token embedding. 0: off.
    kmer_embedding: int = 0
    # Rotary position embedding (Su et al., RoFormer, 2021) on the queries and keys of local
    # attention layers, so a head can attend by offset ("three bases back"); its first frequency
    # has period 3. Off: local attention sees content only.
    local_rope: bool = False
    # Training only: start each batch's positions at a random row of the axial grid, so windows
    # shorter than max_seq_len train every position's embedding (a 4K-window model then works
    # on 64K inputs: without it the copy signal weakened with absolute position, see docs/studies.md).
    random_position_offset: bool = False
    # Absolute positions: "axial" (the paper's axial encoding) or "none". Genome windows are
    # arbitrary crops, so an absolute position means nothing to DNA; the causal convolution and
    # local attention give order. With "none" the model is the same at every position of any
    # input, so a 4K-window model reads 64K inputs as it reads 4K ones (see copy attention).
    positions: str = "axial"
    dropout: float = 0.0  # dropout on attention weights' output and feed-forward
    # Copy attention (copy_attention.py) below the stack: LSH attention on the one-hot codes of
    # the last copy_k bases with shifted values, so a repeat is predicted from its earlier copy.
    # 0 disables it. Causal nucleotide models only.
    copy_k: int = 0
    copy_rc: bool = True  # a second head for reverse-complement (inverted) copies
    copy_temperature: float = 16.0  # logit scale T of an exact k-mer match (see copy_attention.py)
    copy_learn_temperature: bool = True  # learn T (from copy_temperature) or keep it fixed
    copy_hashes: Optional[int] = None  # hash rounds of the copy layer in training; None: n_hashes
    # Hash rounds in evaluation; None: copy_hashes. More rounds than in training only help (the
    # Reformer paper, section 5: a model trained with few hashes evaluates better with more):
    # each round is another chance that the earlier copy is among a query's look-back keys.
    copy_eval_hashes: Optional[int] = None
    # Spaced seeds (copy_attention.py): palindromic 0/1 patterns over the last bases, most recent
    # first; each gets a direct and a reverse-complement head matching only the bases marked 1.
    # None: the contiguous copy_k-mer (copy_k still turns the layer on). docs/long_context.md.
    copy_seeds: Optional[list[str]] = None
    copy_persist: bool = False  # a pointer head per strand following the last alignment through mismatches
    hash_seed: int = 0  # seed of the hash rotations in eval mode (deterministic inference)

    def __post_init__(self) -> None:
        if self.axial_shape is not None:
            self.axial_shape = _pair(self.axial_shape, "model.axial_shape", int)  # YAML gives a list
        if self.attn_layers is not None:
            self.attn_layers = list(self.attn_layers)
        if self.copy_seeds is not None and (isinstance(self.copy_seeds, str) or
                                            any(not isinstance(p, str) for p in self.copy_seeds)):
            raise ConfigError(f"model.copy_seeds must be a list of quoted strings (YAML reads 0110... unquoted "
                              f"as a number), e.g. ['11010011011011001011'], got {self.copy_seeds!r}")
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        for name in ("vocab_size", "dim", "depth", "heads", "bucket_size", "n_hashes",
                     "max_seq_len", "ff_mult", "local_window"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {v!r}")
        if not isinstance(self.ff_chunk_size, int) or isinstance(self.ff_chunk_size, bool) or self.ff_chunk_size < 0:
            raise ConfigError(f"model.ff_chunk_size must be 0 (auto) or a positive integer, got {self.ff_chunk_size!r}")
        if self.dim_head is None and self.dim % self.heads:
            raise ConfigError(
                f"model.dim ({self.dim}) is not divisible by model.heads ({self.heads}); "
                f"use heads in {[h for h in range(1, self.dim + 1) if self.dim % h == 0]} or set dim_head")
        if self.n_buckets is not None and (self.n_buckets < 1 or self.n_buckets & (self.n_buckets - 1)):
            raise ConfigError(f"model.n_buckets must be a power of two or null (auto), got {self.n_buckets}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.positions not in ("axial", "none"):
            raise ConfigError(f"model.positions must be 'axial' or 'none', got {self.positions!r}")
        if not isinstance(self.copy_k, int) or self.copy_k < 0:
            raise ConfigError(f"model.copy_k must be 0 (off) or a k-mer length >= 1, got {self.copy_k!r}")
        if self.copy_k and not self.causal:
            raise ConfigError("model.copy_k needs a causal model (its values look one base ahead); "
                              "set copy_k: 0 for a masked model")
        if self.copy_k and self.vocab_size > 16:
            raise ConfigError(f"model.copy_k needs the nucleotide alphabet, got vocab_size {self.vocab_size} "
                              f"(byte-level); set copy_k: 0 for byte-level models")
        if self.copy_seeds is not None and (not self.copy_k or not self.copy_seeds):
            raise ConfigError(f"model.copy_seeds needs copy_k > 0 (it turns the copy layer on) and at least one "
                              f"pattern; got copy_k {self.copy_k}, {len(self.copy_seeds)} patterns")
        for pat in self.copy_seeds or []:
            if set(pat) - {"0", "1"} or pat.count("1") < 4 or pat != pat[::-1] or len(pat) > 64:
                raise ConfigError(f"model.copy_seeds: pattern {pat!r} must be 0/1 characters, palindromic (so both "
                                  f"strands code the same bases), <= 64 long, >= 4 ones; e.g. '11010011011011001011'")
        if self.copy_persist and max([self.copy_k] + [len(p) for p in self.copy_seeds or []]) < 3:
            raise ConfigError("model.copy_persist needs the copy layer with copy_k >= 3 (e.g. 12)")
        for name in ("copy_hashes", "copy_eval_hashes"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"model.{name} must be a positive integer or null, got {v!r}")
        if self.copy_temperature <= 0:
            raise ConfigError(f"model.copy_temperature must be > 0, got {self.copy_temperature}")
        if self.conv_kernel < 0:
            raise ConfigError(f"model.conv_kernel must be >= 0, got {self.conv_kernel}")
        if self.frame_conv < 0:
            raise ConfigError(f"model.frame_conv must be >= 0 (taps of the dilated convolution), got {self.frame_conv}")
        if not 0 <= self.kmer_embedding <= 6:
            raise ConfigError(f"model.kmer_embedding must be 0 (off) or a k-mer length 1-6 (3 = codons), "
                              f"got {self.kmer_embedding}")
        if self.kmer_embedding and self.vocab_size > 16:
            raise ConfigError("model.kmer_embedding needs the nucleotide alphabet; set kmer_embedding: 0 "
                              "for byte-level models")
        if self.local_rope and self.head_dim % 2:
            raise ConfigError(f"model.local_rope needs an even head width, got {self.head_dim}")
        for kind in self.layer_kinds():
            if kind not in ATTENTION_KINDS:
                raise ConfigError(f"attention kind {kind!r} is not one of {', '.join(ATTENTION_KINDS)}")
        if self.axial_shape is not None:
            a, b = self.axial_shape
            if a * b != self.max_seq_len:
                good = factor_axial(self.max_seq_len)
                raise ConfigError(
                    f"axial_shape ({a}, {b}) covers {_fmt(a * b)} positions but max_seq_len is "
                    f"{_fmt(self.max_seq_len)}; use {good} (or any pair whose product is {_fmt(self.max_seq_len)})")

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        return self.dim_head if self.dim_head is not None else self.dim // self.heads

    @property
    def axial(self) -> tuple[int, int]:
        return self.axial_shape if self.axial_shape is not None else factor_axial(self.max_seq_len)

    def layer_kinds(self) -> list[str]:
        """The attention kind of each of the ``depth`` layers (the pattern repeated)."""
        pattern = self.attn_layers or [self.attention]
        if not pattern:
            raise ConfigError("model.attn_layers is empty; give at least one of lsh, full, local")
        return [pattern[i % len(pattern)] for i in range(self.depth)]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["axial_shape"] is not None:
            d["axial_shape"] = list(d["axial_shape"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "model") -> ReformerConfig:
        return from_dict(cls, upgrade_model_keys(d, where), where)


def upgrade_model_keys(d: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """Model configs written by older versions, mapped to today's fields.

    ``copy_position`` (mix | top | bottom) is gone: the copy layer always joins as the mixture of
    next-base distributions (the former ``mix``, kept in every later config). ``mix`` is dropped
    silently; ``top`` and ``bottom`` models had learned copy values that no longer exist, so they
    are refused with one line that says so.
    """
    if not isinstance(d, Mapping) or "copy_position" not in d:
        return d
    old = d["copy_position"]
    if old != "mix":
        raise ConfigError(f"{where}: copy_position {old!r} was removed (the copy layer now always joins as "
                          f"the mixture, the former 'mix'); this model cannot be loaded: retrain it")
    return {k: v for k, v in d.items() if k != "copy_position"}


@dataclass
class DataConfig:
    """How genomes become training windows (see :mod:`reformer_seq.genome.windows`)."""

    alphabet: str = "nucleotide"  # nucleotide | byte
    seq_len: int = 65536  # window length in tokens
    stride: Optional[int] = None  # distance between window starts; None: seq_len (no overlap)
    max_n_fraction: float = 0.5  # windows with a larger share of N are skipped
    # A region's last window, when shorter than seq_len: padded (True) or skipped (False).
    pad_last: bool = True
    val_fraction: float = 0.1  # the last fraction of each record is held out for validation
    rc_augment: bool = True  # reverse-complement augmentation during training
    # Planted repeats (planted_repeats.py): this share of training windows get `plant_copies`
    # segments of their own (log-uniform length in [plant_min_len, plant_max_len], half of them
    # reverse-complemented, up to plant_max_mutation substitutions) pasted later in the window.
    # They teach the copy attention (model.copy_k); 0 turns planting off. Validation is never planted.
    plant_repeats: float = 0.0
    plant_copies: int = 2
    plant_min_len: int = 32
    plant_max_len: int = 1024
    plant_max_mutation: float = 0.05
    strict: bool = False  # characters outside IUPAC: error (strict) or N (lenient)
    keep_softmask: bool = False  # keep lowercase (soft-masked) as a per-base mask
    mask_prob: float = 0.15  # masked objective: share of positions chosen
    mask_span: int = 1  # masked objective: mean span length (1 = single positions)
    cache_dir: Optional[str] = None  # encoded-genome cache; None: ~/.cache/seqformer

    def __post_init__(self) -> None:
        if self.alphabet not in ("nucleotide", "byte"):
            raise ConfigError(f"data.alphabet must be 'nucleotide' or 'byte', got {self.alphabet!r}")
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len must be >= 2, got {self.seq_len}")
        if self.stride is not None and self.stride < 1:
            raise ConfigError(f"data.stride must be >= 1 or null, got {self.stride}")
        for name in ("max_n_fraction", "val_fraction", "mask_prob", "plant_repeats", "plant_max_mutation"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"data.{name} must be in [0, 1], got {v}")
        if self.plant_copies < 1 or not 2 <= self.plant_min_len <= self.plant_max_len:
            raise ConfigError(f"data.plant_copies must be >= 1 and 2 <= plant_min_len <= plant_max_len, got "
                              f"{self.plant_copies}, {self.plant_min_len}, {self.plant_max_len}")
        if self.mask_span < 1:
            raise ConfigError(f"data.mask_span must be >= 1 (1 = single positions), got {self.mask_span}")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of a pretraining run (see :mod:`reformer_seq.tasks.training`)."""

    objective: str = "causal"  # causal (next base) | masked (masked LM; needs model.causal false)
    batch_size: int = 1  # windows per optimiser step per process (before accumulation)
    grad_accum: int = 1  # micro-batches per optimiser step
    max_steps: int = 1000
    max_time: Optional[float] = None  # seconds; stop (and checkpoint) when reached
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 on GPU only, with a gradient scaler)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    eval_every: int = 100  # steps between validations
    eval_batches: int = 8  # validation batches per evaluation during the run, from the fixed sample (0 = all of it)
    val_bases: int = 2_000_000  # held-out bases validated: a fixed, seeded sample of windows (0 = the whole split)
    save_every: int = 100  # steps between checkpoints
    keep_last: int = 2  # checkpoints kept besides the best
    log_every: int = 10
    num_workers: int = 0

    def __post_init__(self) -> None:
        self.betas = _pair(self.betas, "train.betas", float)
        if self.objective not in ("causal", "masked"):
            raise ConfigError(f"train.objective must be 'causal' or 'masked', got {self.objective!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision must be fp32, bf16 or fp16, got {self.precision!r}")
        for name in ("batch_size", "grad_accum", "max_steps", "eval_every", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class RunConfig:
    """A whole YAML file: ``model``, ``data`` and ``train`` sections."""

    model: ReformerConfig = field(default_factory=ReformerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": dataclasses.asdict(self.data),
                "train": {**dataclasses.asdict(self.train), "betas": list(self.train.betas)}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "") -> RunConfig:
        sections = {"model": ReformerConfig, "data": DataConfig, "train": TrainConfig}
        _reject_unknown(d, sections, where or "config")
        d = {**d, "model": upgrade_model_keys(d.get("model") or {}, "model")}
        return cls(**{k: from_dict(c, d.get(k) or {}, k) for k, c in sections.items()})


# ---------------------------------------------------------------------- dict -> dataclass
T = TypeVar("T")


def _reject_unknown(d: Mapping[str, Any], known: Mapping[str, Any] | typing.Iterable[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(d).__name__}")
    names = list(known)
    for key in d:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown key {key!r} in {where}{hint}")


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{key} must be {tp.__name__}, got {value!r} ({type(value).__name__})")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        elems = [a for a in typing.get_args(tp) if a is not Ellipsis]  # the element types
        if elems:
            if origin is tuple and len(elems) > 1 and len(elems) != len(value):
                raise ConfigError(f"{key} must have {len(elems)} values, got {list(value)}")
            return origin(_check_type(v, elems[min(i, len(elems) - 1)], f"{key}[{i}]") for i, v in enumerate(value))
        return origin(value)
    return value


def from_dict(cls: type[T], d: Mapping[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from ``d``; unknown keys and wrong types raise ConfigError naming the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    _reject_unknown(d, fields, where)
    hints = typing.get_type_hints(cls)
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in d.items()}
    return cls(**kwargs)


def load_run_config(path: str | Path, overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> RunConfig:
    """Read a YAML run config; ``overrides`` maps section -> {key: value} applied on top."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; see configs/ for examples")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected sections model:, data:, train:, got {type(raw).__name__}")
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {})
        raw[section] = {**(raw[section] or {}), **{k: v for k, v in values.items() if v is not None}}
    try:
        return RunConfig.from_dict(raw, where=str(path))
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
