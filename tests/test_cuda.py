"""The 4 GB GPU promise (issue 7): forward+backward at 65,536 tokens with the small config, and
the data pipeline's batches for that length, within 4 GiB of CUDA memory. Needs a CUDA GPU;
on machines without one these tests are skipped (CPU memory is covered by benchmarks/)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reformer_seq import ReformerConfig, ReformerLM
from reformer_seq.fasta import load_genome
from reformer_seq.tokenizers import NucleotideTokenizer
from reformer_seq.windows import CausalCollator, GenomeWindowDataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GIB = 1 << 30
ECOLI = Path(__file__).resolve().parent.parent / "data" / "Ecoli_K12_MG1655.fasta.gz"


def test_64k_tokens_train_within_4_gib_on_gpu(tmp_path):
    torch.cuda.reset_peak_memory_stats()
    dev = torch.device("cuda")
    cfg = ReformerConfig(vocab_size=9, dim=64, depth=2, heads=4, bucket_size=16, n_hashes=4, causal=True,
                         max_seq_len=65536, reversible=True, attention="lsh", dropout=0.0)
    model = ReformerLM(cfg).to(dev)
    tok = NucleotideTokenizer()
    ds = GenomeWindowDataset(load_genome(ECOLI, tok, cache_dir=tmp_path), 65536, tok)
    batch = CausalCollator(tok)([ds[0]])  # the data pipeline's batch for this length
    x, labels = batch["input_ids"].to(dev), batch["labels"].to(dev)
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, 9), labels.view(-1), ignore_index=-100)
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    assert torch.isfinite(loss)
    assert peak < 4 * GIB, f"peak {peak / GIB:.2f} GiB"
