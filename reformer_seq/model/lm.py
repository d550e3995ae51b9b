"""ReformerLM: token embedding, axial positions, a reversible stack of attention and
feed-forward blocks, and a language-model head (Kitaev, Kaiser, Levskaya, ICLR 2020).

``reversible`` chooses how the stack executes (RevNet backward or plain autograd), not what it
computes: the parameters and their names are the same, so a ``state_dict`` moves between the
two unchanged.
"""
from __future__ import annotations

from typing import Optional, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention.layer import SelfAttention
from .positions import AxialPositionalEncoding
from ..config import ReformerConfig
from .attention.copy_attention import CopyAttention, CopyMixture
from ..errors import CheckpointError, ConfigError
from .feedforward import FeedForward
from .local_features import CausalConv, KmerEmbedding
from ..runtime.policy import current_policy, gpu_path
from .reversible import ReversibleBlock, run_blocks
from ..runtime import tuning as runtime



class ReformerLM(nn.Module):
    """Reformer language model: tokens (B, L) -> log-probabilities of the next token (B, L, vocab_size)."""

    def __init__(self, config: ReformerConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.token_emb = nn.Embedding(c.vocab_size, c.dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.pos_emb = AxialPositionalEncoding(c.dim, c.axial, c.max_seq_len) if c.positions == "axial" else None
        self.conv = CausalConv(c.dim, c.conv_kernel) if c.conv_kernel > 0 else None
        self.frame_conv = CausalConv(c.dim, c.frame_conv, dilation=3) if c.frame_conv > 0 else None
        self.kmer_emb = KmerEmbedding(c.dim, c.kmer_embedding) if c.kmer_embedding else None
        self.copy = None
        if c.copy_k:
            self.copy = CopyAttention(c.copy_k, c.copy_rc, c.bucket_size, c.copy_hashes or c.n_hashes,
                                      c.copy_temperature, hash_seed=c.hash_seed * 1000 + 999,
                                      learn_temperature=c.copy_learn_temperature, eval_hashes=c.copy_eval_hashes,
                                      seeds=c.copy_seeds, persist=c.copy_persist)
        self.copy_mix = CopyMixture(c.dim, self.copy.out_heads) if self.copy is not None else None
        self.layers = nn.ModuleList()
        for i, kind in enumerate(c.layer_kinds()):
            attn = SelfAttention(c.dim, c.heads, c.head_dim, kind=kind, causal=c.causal, bucket_size=c.bucket_size,
                                 n_hashes=c.n_hashes, n_buckets=c.n_buckets, local_window=c.local_window,
                                 dropout=c.dropout, hash_seed=c.hash_seed * 1000 + i,
                                 rope=c.local_rope and kind == "local")
            ff = FeedForward(c.dim, c.ff_mult, c.dropout, c.ff_chunk_size)
            self.layers.append(ReversibleBlock(attn, ff))
        self.norm = nn.LayerNorm(c.dim)
        self.to_logits = nn.Linear(c.dim, c.vocab_size)
        self._register_load_state_dict_pre_hook(_drop_legacy_keys)  # checkpoints of older versions

    def _check(self, tokens: Tensor, mask: Optional[Tensor]) -> None:
        c = self.config
        if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64, torch.int16, torch.uint8):
            raise ValueError(f"tokens must be a (batch, length) integer tensor, "
                             f"got {tuple(tokens.shape)} {tokens.dtype}")
        L = tokens.shape[1]
        if L == 0:
            raise ValueError("tokens is empty (length 0)")
        if L > c.max_seq_len:
            raise ValueError(f"sequence length {L:,} exceeds max_seq_len {c.max_seq_len:,}; use a config with "
                             f"max_seq_len >= {L:,} (e.g. configs/long.yaml) or split the sequence into windows")
        if gpu_path(tokens.device):  # no host sync inside a step: a device-side assertion instead
            torch._assert_async(((tokens >= 0) & (tokens < c.vocab_size)).all(),
                                f"token ids must be in [0, {c.vocab_size}); check the tokenizer of the input")
        else:
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= c.vocab_size:
                raise ValueError(f"token ids must be in [0, {c.vocab_size}), got values in [{lo}, {hi}]")
        if mask is not None and (mask.shape != tokens.shape or mask.dtype != torch.bool):
            raise ValueError(f"mask must be a bool tensor of shape {tuple(tokens.shape)}, "
                             f"got {tuple(mask.shape)} {mask.dtype}")

    def _stack(self, tokens: Tensor, mask: Optional[Tensor], n_blocks: Optional[int] = None) -> Tensor:
        """The reversible stack's output (B, L, dim) after its first ``n_blocks`` blocks (default: all),
        before the final norm: the mean of the two residual streams, (y1 + y2) / 2."""
        self._check(tokens, mask)
        B, L = tokens.shape
        runtime.tune_for_input(B * L * self.config.dim, tokens.device.type)  # process-wide; only if allowed
        x = self.token_emb(tokens.long())  # (B, L, dim)
        if self.kmer_emb is not None:
            x = x + self.kmer_emb(tokens)
        if self.pos_emb is not None:
            first_row = self.pos_emb.random_first_row(L) if self.training and self.config.random_position_offset else 0
            x = x + self.pos_emb(L, first_row)
        real_len = None
        if mask is not None:
            x = x * mask.unsqueeze(-1)  # padded embeddings are zero, whatever their token
            real_len = mask.sum(1)
        if self.conv is not None:
            x = self.conv(x)
        if self.frame_conv is not None:
            x = self.frame_conv(x)
        blocks = self.layers if n_blocks is None else self.layers[:n_blocks]
        return run_blocks(cast("list[ReversibleBlock]", blocks), x, mask, real_len, self.config.reversible)

    def resolve_layer(self, layer: Optional[int]) -> int:
        """``layer`` as a block count in [0, depth]: None = the last, negative counts from the end."""
        depth = len(self.layers)
        n = depth if layer is None else (layer + depth + 1 if layer < 0 else layer)
        if not 0 <= n <= depth:
            raise ConfigError(f"layer {layer} does not exist: this model has layers 0 (embeddings) to {depth} "
                              f"(the last block; -1 also means the last)")
        return n

    def encode(self, tokens: Tensor, mask: Optional[Tensor] = None, layer: Optional[int] = None) -> Tensor:
        """Hidden states (B, L, dim). mask: (B, L) bool, True = real token, False = padding.

        ``layer`` N (default: the last, ``depth``) is the output of block N: the mean of the
        reversible stack's two streams after N blocks, (y1 + y2) / 2, through the final LayerNorm,
        so ``layer=depth`` is the model's final output. Layer 0 is the input embeddings (tokens +
        positions, and the causal convolution when the model has one) through the same norm.
        """
        return self.norm(self._stack(tokens, mask, self.resolve_layer(layer)))

    def _head(self, h: Tensor) -> Tensor:
        """The network's own log-probabilities (B, L, V) from the stack's output h (B, L, dim)."""
        return torch.log_softmax(self.to_logits(self.norm(h)), dim=-1)

    def forward(self, tokens: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Log-probabilities (B, L, vocab_size), normalised over the vocabulary; in a causal model
        position t predicts token t + 1. With copy attention they are the copy mixture's
        (:class:`CopyMixture`); without it, the head's ``log_softmax``. Losses and scores take them
        as they are (``cross_entropy`` and ``log_softmax`` leave log-probabilities unchanged)."""
        h = self._stack(tokens, mask)
        if torch.is_grad_enabled() and h.requires_grad and h.numel() >= current_policy().long_input_elems:
            # long inputs: keep only h for the backward, recompute the norm (saves a (B, L, dim) buffer)
            logp = checkpoint(self._head, h, use_reentrant=False)
        else:
            logp = self._head(h)
        if self.copy_mix is None:
            return logp
        assert self.copy is not None  # the mixture exists only beside the copy layer
        p_copy, seen = self.copy.next_base(tokens, mask)
        return self.copy_mix(logp, h, p_copy, seen, tokens)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, folder, tokenizer=None, meta: Optional[dict] = None):
        """Write ``model.safetensors`` + ``config.json`` to ``folder`` atomically.

        ``tokenizer``: the tokenizer whose spec is stored (default: the nucleotide tokenizer).
        """
        from ..runtime.checkpoint import save_checkpoint
        from ..genome.tokenizers import NucleotideTokenizer

        spec = (tokenizer or NucleotideTokenizer()).spec()
        return save_checkpoint(self, self.config, spec, folder, meta=meta)

    @classmethod
    def from_pretrained(cls, folder, map_location: str = "cpu", **overrides) -> ReformerLM:
        """A model from a checkpoint folder, a run folder (its best checkpoint) or a shipped model's
        name (``ecoli``, ``human``); of a fine-tuned checkpoint, its backbone. ``overrides`` change
        config fields that do not affect parameters. With its tokenizer:
        :func:`reformer_seq.tasks.pretrained.load_pretrained`."""
        from ..runtime.checkpoint import CONFIG_FILE, load_model_weights, read_checkpoint_config, resolve_checkpoint

        folder = resolve_checkpoint(folder)
        info = read_checkpoint_config(folder)
        try:
            cfg = ReformerConfig.from_dict({**info["model"], **overrides}, where=f"{folder / CONFIG_FILE} model")
        except ConfigError as e:
            raise CheckpointError(f"{folder}: {e}") from None
        model = cls(cfg)
        load_model_weights(model, folder, map_location, prefix="backbone." if "finetune" in info else "")
        return model


# Parameters of the removed copy placements (top / bottom: learned copy values), which the mixture
# never used and older checkpoints still hold: dropped when such a checkpoint loads.
LEGACY_KEYS = ("copy.norm.", "copy.to_v.", "copy.to_out.")


def _drop_legacy_keys(state_dict: dict, prefix: str, *_args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):].startswith(LEGACY_KEYS)]:
        del state_dict[key]
