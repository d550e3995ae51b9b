"""seqformer score: per-base tracks equal evaluate's likelihood, strands mirror, outputs round-trip."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from helpers import PHIX, invoke, save_causal_checkpoint, sharp_model
from reformer_seq.errors import InputError
from reformer_seq.tasks.evaluation.evaluate import evaluate_checkpoint
from reformer_seq.tasks.evaluation.likelihood import ModelScorer, likelihood
from reformer_seq.genome.encoded import EncodedRecord
from reformer_seq.genome.fasta import read_records
from reformer_seq.tasks.scoring.tracks import parse_region, read_bed, read_bedgraph, resolve_regions, runs, score_tracks
from reformer_seq.genome.tokenizers import NucleotideTokenizer

TOK = NucleotideTokenizer()


@pytest.fixture(scope="module")
def seq() -> str:
    s = next(read_records(PHIX)).sequence[:1200].upper()
    return s[:400] + "NNNNN" + s[405:]  # an N run: no value there


@pytest.fixture(scope="module")
def ck(tmp_path_factory, seq):
    root = tmp_path_factory.mktemp("score")
    fa = root / "g.fa"
    fa.write_text(f">g\n{seq}\n>h\n{seq[:300]}\n")
    ck = save_causal_checkpoint(sharp_model(True, seed=1), root / "ck", fa, 200)
    return {"fa": fa, "ck": ck, "root": root}


def test_track_mean_equals_evaluate_bits_per_base(ck, tmp_path, seq):
    out = tmp_path / "t.npz"
    res = invoke("score", str(ck["fa"]), "--checkpoint", str(ck["ck"]), "--out", str(out),
                 "--region", "g:101-1000", "--quiet")
    assert res.exit_code == 0, res.output
    tr = np.load(out)
    assert set(tr.files) == {"g"} and tr["g"].dtype == np.float32 and len(tr["g"]) == len(seq)
    region = tmp_path / "region.fa"
    region.write_text(f">g\n{seq[100:1000]}\n")
    rep = evaluate_checkpoint(region, ck["ck"], None, progress=False)  # default window: the training seq_len
    vals = tr["g"][100:1000]
    assert np.isfinite(vals).sum() == rep["n_bases"]
    assert float(np.nanmean(vals.astype(np.float64))) == pytest.approx(rep["bits_per_base"], rel=1e-5)
    assert np.isnan(tr["g"][:100]).all() and np.isnan(tr["g"][1000:]).all() and np.isnan(tr["g"][400:405]).all()
    assert np.isnan(vals[0]) and np.isfinite(vals[1])  # a region's first base has no left context


def test_overlap_gives_each_base_its_context_and_one_value(ck, seq):
    scorer = ModelScorer(sharp_model(True, seed=1), device="cpu")
    rec = [EncodedRecord("g", "", TOK.encode(seq))]
    a = score_tracks(rec, scorer, window=200, overlap=1, progress=False)["g"]
    b = score_tracks(rec, scorer, window=200, overlap=50, progress=False)["g"]
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    assert np.allclose(a[:200], b[:200], equal_nan=True)  # the first window is the same
    assert not np.allclose(a[200:], b[200:], equal_nan=True)  # later bases see more context
    lk = likelihood(rec, scorer, 200, progress=False)
    assert np.array_equal(np.isfinite(a), lk.scored[0])


def test_rc_average_is_strand_symmetric(ck, seq):
    scorer = ModelScorer(sharp_model(True, seed=1), device="cpu")
    fwd = [EncodedRecord("g", "", TOK.encode(seq))]
    rev = [EncodedRecord("g", "", TOK.reverse_complement(TOK.encode(seq)))]
    a = score_tracks(fwd, scorer, 200, rc_average=True, progress=False)["g"]
    b = score_tracks(rev, scorer, 200, rc_average=True, progress=False)["g"]
    np.testing.assert_allclose(a, b[::-1], atol=1e-5)
    single = score_tracks(fwd, scorer, 200, progress=False)["g"]
    assert np.isfinite(a[0]) and not np.isfinite(single[0])  # the first base is scored from the other side
    assert not np.allclose(a[1:400], single[1:400])


@pytest.mark.parametrize("suffix", [".bedgraph", ".bedgraph.gz"])
def test_bedgraph_round_trips_to_the_npz(ck, tmp_path, suffix):
    args = ["score", str(ck["fa"]), "--checkpoint", str(ck["ck"]), "--rc-average", "--quiet", "--digits", "2"]
    for out in (tmp_path / "t.npz", tmp_path / f"t{suffix}"):
        res = invoke(*args, "--out", out)
        assert res.exit_code == 0, res.output
    tr = np.load(tmp_path / "t.npz")
    raw = (gzip.open if suffix.endswith(".gz") else open)(tmp_path / f"t{suffix}", "rt").read()
    assert raw.startswith("track type=bedGraph")
    bg = read_bedgraph(tmp_path / f"t{suffix}")
    assert set(bg) == {"g", "h"}
    for chrom, ivs in bg.items():
        rebuilt = np.full(len(tr[chrom]), np.nan)
        for s, e, v in ivs:
            rebuilt[s:e] = v
        want = np.round(tr[chrom].astype(np.float64), 2)
        np.testing.assert_allclose(rebuilt, want, atol=1e-9)
        assert all(a[1] < b[0] or a[2] != b[2] for a, b in zip(ivs, ivs[1:]))  # equal neighbours were merged


def test_runs_merge_equal_rounded_values_and_skip_nan():
    v = np.array([1.0, 1.0004, 1.2, np.nan, 1.2, 1.2, np.nan])
    s, e, x = runs(v, 3)
    assert s.tolist() == [0, 2, 4] and e.tolist() == [2, 3, 6] and x.tolist() == [1.0, 1.2, 1.2]


def test_regions_parse_merge_and_fail_clearly(tmp_path):
    recs = [EncodedRecord("a", "", np.zeros(100, np.uint8)), EncodedRecord("b", "", np.zeros(50, np.uint8))]
    assert parse_region("a:1,001-2,000") == ("a", 1000, 2000) and parse_region("b") == ("b", 0, -1)
    bed = tmp_path / "r.bed"
    bed.write_text("track name=x\nb\t0\t10\na\t5\t20\na\t15\t30\na\t40\t50\n")
    assert resolve_regions(recs, read_bed(bed)) == [(0, 5, 30), (0, 40, 50), (1, 0, 10)]
    with pytest.raises(InputError, match="not in the FASTA"):
        resolve_regions(recs, [("c", 0, 5)])
    with pytest.raises(InputError, match="past the end"):
        resolve_regions(recs, [("b", 0, 51)])
    with pytest.raises(InputError, match="start must be >= 1"):
        parse_region("a:0-5")


def test_cli_errors_are_one_line(ck, tmp_path):
    res = invoke("score", str(ck["fa"]), "--checkpoint", str(ck["ck"]), "--out",
                 str(tmp_path / "t.wig"))
    assert res.exit_code == 2 and ".bedgraph" in res.output
    res = invoke("score", str(ck["fa"]), "--checkpoint", str(ck["ck"]), "--out",
                 str(tmp_path / "t.npz"), "--overlap", "500", "--window", "200", "--quiet")
    assert res.exit_code == 2 and "overlap" in res.output
    try:
        import pyBigWig  # noqa: F401
    except ImportError:  # the optional extra is missing: one clear line
        res = invoke("score", str(ck["fa"]), "--checkpoint", str(ck["ck"]), "--out",
                     str(tmp_path / "t.bw"), "--quiet")
        assert res.exit_code == 2 and "pyBigWig" in res.output
