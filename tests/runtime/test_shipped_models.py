"""The models shipped in models/ load by name (``--checkpoint ecoli``) and reproduce the
held-out figure recorded when they were shipped (benchmarks/ship_model.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers import REPO, invoke
from reformer_seq.errors import CheckpointError
from reformer_seq.runtime.checkpoint import SHIPPED_MODELS, resolve_checkpoint, shipped_model

PRESENT = [n for n in SHIPPED_MODELS if (REPO / "models" / n / "recorded.json").is_file()]


@pytest.mark.parametrize("name", PRESENT)
def test_shipped_model_reproduces_its_recorded_figure(name):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from ship_model import slice_bits

    folder = resolve_checkpoint(name)
    assert folder == shipped_model(name)
    rec = json.loads((folder / "recorded.json").read_text())
    got = slice_bits(folder, REPO / "data" / rec["genome"], (rec["start"], rec["end"]))
    assert got["n_bases"] == rec["n_bases"]
    assert got["bits_per_base"] == pytest.approx(rec["bits_per_base"], abs=1e-4)
    assert (folder / "CARD.md").is_file()


def test_unknown_name_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="shipped model"):
        resolve_checkpoint("no-such-model")


def test_a_folder_of_that_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ecoli").mkdir()
    (tmp_path / "ecoli" / "config.json").write_text("{}")
    assert resolve_checkpoint("ecoli") == Path("ecoli")


@pytest.mark.slow
@pytest.mark.skipif("ecoli" not in PRESENT, reason="no shipped E. coli model in models/")
def test_readme_quick_start_needs_no_training(tmp_path):
    """The README's first commands: score the example VCF and embed a FASTA with --checkpoint ecoli."""
    import csv

    data = REPO / "data"
    out = tmp_path / "ecoli_example.tsv"
    res = invoke("score-variants", str(data / "variants" / "ecoli_example.vcf"), "--reference",
                 str(data / "Ecoli_K12_MG1655.fasta.gz"), "--checkpoint", "ecoli", "--baseline",
                 "markov", "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open(), delimiter="\t"))
    scored = [r for r in rows if r["llr"] != "NA"]
    assert len(rows) == 32 and len(scored) == 31  # one symbolic <DEL> is not scored
    assert all(r["alt"] == "<DEL>" for r in rows if r["llr"] == "NA")
    emb = tmp_path / "phix.npz"
    res = invoke("embed", str(data / "phiX174_NC_001422.1.fa"), "--checkpoint", "ecoli", "--out",
                 str(emb), "--quiet")
    assert res.exit_code == 0, res.output
    import numpy as np

    assert np.load(emb)["embeddings"].shape == (1, 64)
