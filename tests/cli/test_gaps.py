"""Assembly gaps are data, not errors: records that start with, end with and contain runs of N
longer than the window (down to a real-size 50,000-base gap, as in GRCh37 chrX) are evaluated,
scored, embedded, variant-scored, fine-tuned on and trained on; windows with nothing to score are
skipped and the N bases counted."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import PHIX, TINY, invoke, save_causal_checkpoint, sharp_model
from reformer_seq.genome.encoded import EncodedRecord
from reformer_seq.genome.fasta import read_records
from reformer_seq.genome.tokenizers import NucleotideTokenizer
from reformer_seq.tasks.evaluation.likelihood import FunctionScorer, likelihood

TOK = NucleotideTokenizer()
GAP = 50_000  # the larger of the two gaps in a 4 Mb slice of GRCh37 chrX


def uniform(tokens: np.ndarray) -> np.ndarray:
    out = np.full(tokens.shape + (9,), math.log(1e-9))
    out[..., 4:8] = math.log(0.25)
    return out


def gapped(seq: str, gap: int, edge: int) -> str:
    """``edge`` N, half of ``seq``, ``gap`` N, the other half, ``edge`` N."""
    h = len(seq) // 2
    return "N" * edge + seq[:h] + "N" * gap + seq[h:] + "N" * edge


@pytest.fixture(scope="module")
def phix() -> str:
    return next(read_records(PHIX)).sequence.upper()


@pytest.fixture(scope="module")
def files(tmp_path_factory, phix):
    root = tmp_path_factory.mktemp("gaps")
    seq = gapped(phix[:2000], GAP, 700)
    fa = root / "gapped.fa"
    fa.write_text(f">chrG\n{seq}\n")
    ck = save_causal_checkpoint(sharp_model(True, seed=1), root / "ck", fa, 200)
    return {"root": root, "fa": fa, "seq": seq, "ck": ck}


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_likelihood_skips_windows_inside_gaps_and_counts_them(phix, objective):
    seq = gapped(phix[:600], 500, 300)  # N runs of 300 and 500 against a 100-base window
    rec = [EncodedRecord("g", "", TOK.encode(seq))]
    lk = likelihood(rec, FunctionScorer(uniform, objective), window=100, mask_prob=0.5, progress=False)
    assert lk.n_skipped_n == seq.count("N") == 1100
    if objective == "causal":
        assert lk.n_bases == 600  # every A/C/G/T scored once (the record's first base is an N)
    else:
        assert 0 < lk.n_bases < 600
    assert lk.bits_per_base == pytest.approx(2.0)
    assert not lk.scored[0][np.array(list(seq)) == "N"].any()


def test_evaluate_on_a_50kb_gap(files):
    out = files["root"] / "report"
    res = invoke("evaluate", files["fa"], "--checkpoint", files["ck"], "--out", out, "--window", 256, "--quiet")
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_bases"] == 2000 and rep["n_skipped_n"] == GAP + 1400
    assert math.isfinite(rep["bits_per_base"])
    assert f"{GAP + 1400:,} bases skipped as N" in res.output


def test_score_on_a_50kb_gap(files):
    out = files["root"] / "t.npz"
    res = invoke("score", files["fa"], "--checkpoint", files["ck"], "--out", out, "--window", 256, "--quiet")
    assert res.exit_code == 0, res.output
    track = np.load(out)["chrG"]
    assert np.isfinite(track).sum() == 2000 and len(track) == len(files["seq"])
    assert f"{GAP + 1400:,} bases skipped as N" in res.output


def test_embed_on_a_50kb_gap(files):
    out = files["root"] / "e.npz"
    res = invoke("embed", files["fa"], "--checkpoint", files["ck"], "--out", out, "--window", 512, "--quiet")
    assert res.exit_code == 0, res.output
    z = np.load(out)
    assert z["embeddings"].shape[0] == 1 and np.isfinite(z["embeddings"]).all()


def test_score_variants_beside_a_50kb_gap(files):
    seq = files["seq"]
    first = seq.index("A", 700)  # the first bases after the leading run of N
    after_gap = 700 + 1000 + GAP  # the first base after the big gap (0-based)
    rows = []
    for i, p in enumerate([first, 700 + 999, after_gap, after_gap + 3]):
        ref = seq[p]
        alt = "T" if ref != "T" else "G"
        rows.append(f"chrG\t{p + 1}\tv{i}\t{ref}\t{alt}\t.\tPASS\t.")
    vcf = files["root"] / "v.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" + "\n".join(rows) + "\n")
    out = files["root"] / "v.tsv"
    res = invoke("score-variants", vcf, "--reference", files["fa"], "--checkpoint", files["ck"], "--out", out,
                 "--window", 256, "--quiet")
    assert res.exit_code == 0, res.output
    assert "4 of 4 alleles scored" in res.output


@pytest.mark.slow
def test_finetune_on_sequences_with_long_n_runs(tmp_path, files):
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), 80)) for _ in range(16)]
    seqs = [("N" * 300 + s if i % 3 == 0 else s + "N" * 300 if i % 3 == 1 else s[:40] + "N" * 300 + s[40:])
            for i, s in enumerate(seqs)]
    tsv = tmp_path / "l.tsv"
    tsv.write_text("sequence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(seqs)))
    res = invoke("finetune", tsv, "--checkpoint", files["ck"], "--out", tmp_path / "ft", "--max-steps", 4,
                 "--eval-every", 2, "--batch-size", 4, "--quiet")
    assert res.exit_code == 0, res.output


def test_pretraining_validation_on_a_gapped_genome(tmp_path, files):
    run = tmp_path / "run"
    res = invoke("pretrain", files["fa"], "--config", TINY, "--out", run, "--max-steps", 2, "--quiet")
    assert res.exit_code == 0, res.output
    result = json.loads((run / "result.json").read_text())
    assert result["val_bits_per_base"] is None or math.isfinite(result["val_bits_per_base"])
