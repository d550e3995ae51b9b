"""Motifs: reading JASPAR/MEME/TRANSFAC through Bio.motifs, selecting by id, PSSM scores equal to
Biopython's, p-value thresholds checked by enumeration, planted sites found on both strands, and
JASPAR CTCF on real CTCF ChIP-seq peaks against the same peaks shuffled."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from reformer_seq.errors import InputError
from reformer_seq.genome.encoded import EncodedRecord, load_genome
from reformer_seq.tasks.motifs import (Motif, Threshold, background_from_records, fraction_with_site, load_motifs,
                                 make_pssm, non_overlapping, read_motifs, scan_records, score_sequence,
                                 select_motifs, shuffle_records)
from reformer_seq.genome.tokenizers import NucleotideTokenizer

from helpers import DATA

MOTIFS = DATA / "motifs"
CTCF_JASPAR = MOTIFS / "MA0139.2_CTCF.jaspar"
CTCF_MEME = MOTIFS / "MA0139.2_CTCF.meme"
SUBSET = MOTIFS / "JASPAR2024_CORE_vertebrates_subset.jaspar"
PEAKS = DATA / "tfbs" / "Gm12878.CTCF.top500.w200.fa"
TOK = NucleotideTokenizer()

TRANSFAC = """AC  MA0139.2
XX
ID  CTCF
XX
P0      A      C      G      T
01    281     49    449    134      R
02     56    800     21     36      C
03      8    903      0      2      C
04    744     13     65     91      A
05     40    528    334     11      S
06    107    433     48    324      Y
07    851     11     32     18      A
08      5      0    903      3      G
09    333      3    566      9      R
10     54     12    504    341      K
11     12      0    890      8      G
12     56      8    775     71      G
13    104    733      5     67      C
14    372     13    507     17      R
15     82    482    307     37      S
XX
//
"""


def random_ids(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(4, 8, n).astype(np.uint8)


# ---------------------------------------------------------------------- reading
def test_jaspar_meme_and_transfac_give_the_same_ctcf_matrix(tmp_path):
    (tmp_path / "ctcf.transfac").write_text(TRANSFAC)
    j, = read_motifs(CTCF_JASPAR)
    m, = read_motifs(CTCF_MEME)
    t, = read_motifs(tmp_path / "ctcf.transfac")
    assert (j.id, j.name) == (m.id, m.name) == (t.id, t.name) == ("MA0139.2", "CTCF")
    assert j.counts.shape == (15, 4) and j.counts[0].tolist() == [281, 49, 449, 134]
    np.testing.assert_array_equal(j.counts, t.counts)
    # MEME stores probabilities x nsites; the matrices agree to rounding.
    np.testing.assert_allclose(m.counts / m.counts.sum(1, keepdims=True), j.counts / j.counts.sum(1, keepdims=True),
                               atol=2e-3)
    assert j.consensus() == "GCCACCAGGGGGCGC"


def test_format_from_content_and_frequency_matrices(tmp_path):
    f = tmp_path / "no_extension"
    f.write_text(CTCF_MEME.read_text())
    m, = read_motifs(f)
    assert m.id == "MA0139.2"
    freq = tmp_path / "freq.jaspar"
    freq.write_text(">X1 toy\nA [0.7 0.1]\nC [0.1 0.1]\nG [0.1 0.1]\nT [0.1 0.7]\n")
    x, = read_motifs(freq)
    np.testing.assert_allclose(x.counts.sum(1), 20.0)  # a frequency matrix reads as 20 nominal sites


def test_collection_and_selection_by_id_version_or_name():
    allm = load_motifs(SUBSET)
    assert len(allm) == 11 and len({m.id for m in allm}) == 11
    assert [m.id for m in load_motifs(SUBSET, ["MA0139.2"])] == ["MA0139.2"]
    assert [m.id for m in select_motifs(allm, ["MA0139"])] == ["MA0139.2"]
    assert {m.id for m in select_motifs(allm, ["ctcf"])} == {"MA0139.2", "MA1929.2", "MA1930.2"}
    # Two files: the first motif with an id wins.
    both = load_motifs([CTCF_JASPAR, CTCF_MEME, SUBSET])
    assert [m.id for m in both].count("MA0139.2") == 1 and both[0].source.endswith(".jaspar")


def test_bad_inputs_raise_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="motif file not found"):
        read_motifs(tmp_path / "missing.jaspar")
    bad = tmp_path / "bad.jaspar"
    bad.write_text(">MA1 x\nA [1 2\nC oops\n")
    with pytest.raises(InputError, match="not a valid JASPAR"):
        read_motifs(bad)
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    with pytest.raises(InputError, match="cannot tell the motif format"):
        read_motifs(junk)
    with pytest.raises(InputError, match=r"'MA0139\.9'.*did you mean MA0139\.2") as e:
        load_motifs(SUBSET, ["MA0139.9"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------- PSSM and scores
def test_pssm_scores_match_biopython_on_both_strands():
    from Bio.Seq import Seq

    motif, = read_motifs(CTCF_JASPAR)
    bg = np.array([0.3, 0.2, 0.2, 0.3])
    pc = 1.0
    pssm = make_pssm(motif, bg, pc)
    bio = motif.bio.counts.normalize(pseudocounts={l: pc * b for l, b in zip("ACGT", bg)}).log_odds(
        {l: b for l, b in zip("ACGT", bg)})
    ids = random_ids(400, 1)
    ids[57] = TOK.n_id  # windows over an N never score
    seq = Seq(TOK.decode(ids))
    fwd, rev = score_sequence(ids, pssm)
    bio_fwd = np.asarray(bio.calculate(seq), dtype=np.float64)
    bio_rev = np.asarray(bio.reverse_complement().calculate(seq), dtype=np.float64)
    assert fwd.shape == bio_fwd.shape == (400 - 15 + 1,)
    for ours, theirs in ((fwd, bio_fwd), (rev, bio_rev)):
        nan = np.isnan(theirs)
        assert nan.sum() == 15 and np.all(np.isneginf(ours[nan]))
        np.testing.assert_allclose(ours[~nan], theirs[~nan], atol=1e-4)
    np.testing.assert_allclose(pssm.log_odds, np.array([[bio[l][i] for l in "ACGT"] for i in range(15)]), atol=1e-5)


def test_pvalue_threshold_agrees_with_enumeration():
    counts = np.array([[8, 1, 1, 0], [0, 9, 1, 0], [1, 1, 1, 7], [3, 3, 2, 2], [0, 0, 10, 0]], float)
    bg = np.array([0.3, 0.2, 0.2, 0.3])
    pssm = make_pssm(Motif("T1", "toy", counts), bg)
    words = np.array(list(itertools.product(range(4), repeat=5)))  # all 1,024 words
    scores = pssm.log_odds[np.arange(5), words].sum(1)
    probs = bg[words].prod(1)
    for p in (1e-1, 1e-2, 3e-3):
        cut = Threshold.parse(f"p:{p}").score_for(pssm)
        exact_tail = probs[scores >= cut - 1e-9].sum()
        assert exact_tail <= p * 1.05
        # and the cut is not needlessly high: the next lower word score would exceed p
        below = scores[scores < cut - 0.01]
        if below.size:
            assert probs[scores >= below.max()].sum() > p * 0.95
    ours = pssm.pvalue_of(scores)
    exact = np.array([probs[scores >= s - 1e-9].sum() for s in scores])
    looser = np.array([probs[scores >= s - 0.006].sum() for s in scores])  # W * grid = 0.005 bits
    assert np.all(ours >= exact - 1e-12) and np.all(ours <= looser + 1e-12)


def test_threshold_parsing():
    assert Threshold.parse(None) == Threshold("pvalue", 1e-5)
    assert Threshold.parse("p=1e-4") == Threshold("pvalue", 1e-4)
    assert Threshold.parse("rel:0.9") == Threshold("relative", 0.9)
    assert Threshold.parse("12.5") == Threshold.parse(12.5) == Threshold("score", 12.5)
    motif, = read_motifs(CTCF_JASPAR)
    pssm = make_pssm(motif)
    assert Threshold.parse("rel:1").score_for(pssm) == pytest.approx(pssm.max_score)
    assert Threshold.parse("rel:0").score_for(pssm) == pytest.approx(pssm.min_score)
    for bad in ("p:2", "rel:1.5", "x:3", "strict"):
        with pytest.raises(InputError, match="threshold"):
            Threshold.parse(bad)


# ---------------------------------------------------------------------- scanning
def test_scan_finds_planted_sites_on_both_strands_at_the_right_positions():
    motif, = read_motifs(CTCF_JASPAR)
    site = TOK.encode(motif.consensus())
    ids = random_ids(2000, 7)
    plants = {120: "+", 777: "-", 1500: "+", 1985 - 15: "-"}
    for pos, strand in plants.items():
        ids[pos:pos + 15] = site if strand == "+" else TOK.reverse_complement(site)
    rec = EncodedRecord("chrT", "planted", ids)
    pssm = make_pssm(motif, background_from_records([rec]))
    sites = scan_records([rec], pssm)  # default threshold p:1e-5
    assert [(s.start, s.end, s.strand) for s in sites] == [(p, p + 15, st) for p, st in sorted(plants.items())]
    assert all(s.score == pytest.approx(pssm.max_score) and s.record == "chrT" for s in sites)
    # a minus-strand site's reverse complement scores the same as the consensus on the plus strand
    fwd, rev = score_sequence(ids, pssm)
    assert rev[777] == pytest.approx(fwd[120])


def test_non_overlapping_keeps_the_best_site():
    from reformer_seq.tasks.motifs import Site

    sites = [Site("r", 0, 10, "+", 5.0), Site("r", 5, 15, "-", 7.0), Site("r", 14, 24, "+", 6.0),
             Site("r", 30, 40, "+", 1.0)]
    assert [(s.start, s.strand) for s in non_overlapping(sites)] == [(5, "-"), (30, "+")]


def test_ctcf_matrix_finds_sites_in_ctcf_peaks_but_not_in_shuffled_peaks():
    records = load_genome(PEAKS, use_cache=False)
    motif, = load_motifs(CTCF_JASPAR)
    pssm = make_pssm(motif, background_from_records(records))
    real = fraction_with_site(records, scan_records(records, pssm))
    shuffled = np.mean([fraction_with_site(records, scan_records(shuffle_records(records, seed), pssm))
                        for seed in range(3)])
    assert len(records) == 500
    assert 0.5 < real < 0.75, real  # 0.63 at p:1e-5
    assert shuffled < 0.01, shuffled
    assert math.isfinite(Threshold.parse(None).score_for(pssm))
