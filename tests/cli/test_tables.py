"""Every TSV seqformer writes has its column header as line 1, so csv.DictReader,
pandas.read_csv(sep="\\t") and R's read.delim read it as written; what a table means goes to a
JSON sidecar (TSV) or the VCF header (VCF)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import PHIX, invoke, save_causal_checkpoint, sharp_model

VARIANT_COLUMNS = ["chrom", "pos", "id", "ref", "alt", "llr", "llr_forward", "llr_reverse", "note"]


def dict_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    seq = "".join(l.strip() for l in PHIX.read_text().splitlines()[1:])[:1500].upper()
    fa = root / "g.fa"
    fa.write_text(f">g\n{seq}\n")
    ck = save_causal_checkpoint(sharp_model(True, seed=2), root / "ck", fa, 200)
    return {"root": root, "fa": fa, "seq": seq, "ck": ck}


def test_score_variants_tsv_header_first_metadata_in_sidecar(ck, tmp_path):
    seq = ck["seq"]
    rows = [f"g\t{p + 1}\tv{p}\t{seq[p]}\t{'T' if seq[p] != 'T' else 'G'}\t.\tPASS\t." for p in (300, 700, 701)]
    vcf = tmp_path / "v.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" + "\n".join(rows) + "\n")
    out = tmp_path / "s.tsv"
    res = invoke("score-variants", vcf, "--reference", ck["fa"], "--checkpoint", ck["ck"], "--out", out,
                 "--window", 200, "--quiet")
    assert res.exit_code == 0, res.output
    assert out.read_text().splitlines()[0].split("\t") == VARIANT_COLUMNS
    fields, table = dict_rows(out)
    assert fields == VARIANT_COLUMNS and [r["id"] for r in table] == ["v300", "v700", "v701"]
    assert all(float(r["llr"]) == float(r["llr"]) for r in table)
    side = json.loads((tmp_path / "s.tsv.json").read_text())
    assert side["columns"] == VARIANT_COLUMNS and side["window"] == 200 and any("NEGATIVE" in n or "negative" in n
                                                                                  for n in side["notes"])


def test_predict_tsv_header_first(ck, tmp_path):
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), 60)) for _ in range(12)]
    tsv = tmp_path / "l.tsv"
    tsv.write_text("sequence\tlabel\n" + "".join(f"{s}\t{'ab'[i % 2]}\n" for i, s in enumerate(seqs)))
    run = tmp_path / "ft"
    res = invoke("finetune", tsv, "--checkpoint", ck["ck"], "--out", run, "--max-steps", 2, "--eval-every", 2,
                 "--batch-size", 4, "--quiet")
    assert res.exit_code == 0, res.output
    fa = tmp_path / "p.fa"
    fa.write_text("".join(f">r{i}\n{s}\n" for i, s in enumerate(seqs[:3])))
    res = invoke("predict", fa, "--checkpoint", run, "--out", tmp_path / "p.tsv", "--quiet")
    assert res.exit_code == 0, res.output
    fields, table = dict_rows(tmp_path / "p.tsv")
    assert fields == ["id", "length", "predicted", "p_a", "p_b"] and [r["id"] for r in table] == ["r0", "r1", "r2"]
