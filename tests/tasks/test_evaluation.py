"""Evaluation: oracle scoring models (a planted-motif oracle, a uniform predictor, a look-ahead
cheat that checks the causal row convention), Markov baselines against hand counts and the E. coli
reference figure, the sign test, the ReformerLM adapter, and `seqformer evaluate` end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from reformer_seq.runtime.policy import use_policy
from reformer_seq import ReformerLM
from reformer_seq.tasks.evaluation.evaluate import evaluate_records
from reformer_seq.tasks.evaluation.likelihood import FunctionScorer, ModelScorer, likelihood
from reformer_seq.tasks.evaluation.markov import MarkovModel, Segment, markov_holdout_table
from reformer_seq.tasks.evaluation.motif_masking import motif_masking, sign_test_pvalue
from reformer_seq.genome.encoded import EncodedRecord
from reformer_seq.genome.fasta import read_records
from reformer_seq.tasks.motifs import load_motifs
from reformer_seq.genome.tokenizers import MASK_ID, NucleotideTokenizer

from helpers import DATA, invoke, tiny_model as build_tiny_model

TOK = NucleotideTokenizer()
CTCF_JASPAR = DATA / "motifs" / "MA0139.2_CTCF.jaspar"
SUBSET = DATA / "motifs" / "JASPAR2024_CORE_vertebrates_subset.jaspar"
PEAKS = DATA / "tfbs" / "Gm12878.CTCF.top500.w200.fa"
V = 9
LOG_EPS = math.log(1e-9)


# ---------------------------------------------------------------------- oracles
def uniform_logp(tokens: np.ndarray) -> np.ndarray:
    """Uniform over A/C/G/T (specials get ~0 probability)."""
    out = np.full(tokens.shape + (V,), LOG_EPS)
    out[..., 4:8] = math.log(0.25)
    return out


def confident(out: np.ndarray, b: int, t: int, token: int) -> None:
    out[b, t, 4:8] = math.log(0.01)
    out[b, t, token] = math.log(0.97)


def causal_motif_oracle(motif: str):
    """Knows the motif: once the last >= 4 bases spell the start of the motif (either strand),
    predicts the motif's next base; uniform otherwise."""
    words = [TOK.encode(motif).astype(np.int64), TOK.reverse_complement(TOK.encode(motif)).astype(np.int64)]

    def fn(tokens: np.ndarray) -> np.ndarray:
        out = uniform_logp(tokens)
        for b, row in enumerate(tokens):
            for w in words:
                W = len(w)
                starts = np.flatnonzero(np.all([row[j:len(row) - 3 + j] == w[j] for j in range(4)], axis=0))
                for p in starts:
                    for j in range(4, W):
                        if p + j >= len(row) or row[p + j - 1] != w[j - 1]:
                            break
                        confident(out, b, p + j - 1, int(w[j]))  # row t predicts token t + 1
        return out

    return fn


def masked_motif_oracle(planted: dict[bytes, np.ndarray], flank: int = 8):
    """Knows where motifs were planted (by their left flank): fills a masked site with its bases."""

    def fn(tokens: np.ndarray) -> np.ndarray:
        out = uniform_logp(tokens)
        for b, row in enumerate(tokens):
            m = row == MASK_ID
            edges = np.flatnonzero(np.diff(np.concatenate([[0], m.astype(int), [0]])))
            for s, e in zip(edges[0::2], edges[1::2]):
                site = planted.get(row[max(0, s - flank):s].tobytes())
                if site is not None and len(site) == e - s:
                    for j in range(e - s):
                        confident(out, b, s + j, int(site[j]))
        return out

    return fn


def lookahead_cheat(tokens: np.ndarray) -> np.ndarray:
    """Row t puts all mass on token t + 1: perfect only if rows are read with the causal convention."""
    out = uniform_logp(tokens)
    for b, row in enumerate(tokens):
        for t in range(len(row) - 1):
            if 4 <= row[t + 1] <= 7:
                confident(out, b, t, int(row[t + 1]))
    return out


def planted_records(n_records: int = 30, length: int = 300, seed: int = 0):
    """Uniform random sequences, each with the CTCF consensus planted once (alternating strands)."""
    motif, = load_motifs(CTCF_JASPAR)
    site = TOK.encode(motif.consensus()).astype(np.uint8)
    rng = np.random.default_rng(seed)
    records, planted = [], {}
    for i in range(n_records):
        ids = rng.integers(4, 8, length).astype(np.uint8)
        pos = int(rng.integers(40, length - 60))
        word = site if i % 2 == 0 else TOK.reverse_complement(site)
        ids[pos:pos + len(site)] = word
        planted[ids[pos - 8:pos].astype(np.int64).tobytes()] = word.astype(np.int64)
        records.append(EncodedRecord(f"r{i}", "", ids))
    return records, motif, planted


# ---------------------------------------------------------------------- motif masking with oracles
def test_causal_oracle_that_knows_the_motif_reaches_high_site_accuracy():
    records, motif, _ = planted_records(seed=4)  # a seed without chance sites: exactly the 30 planted
    scorer = FunctionScorer(causal_motif_oracle(motif.consensus()), "causal")
    r, = motif_masking(records, scorer, [motif], window=120, batch_size=16, progress=False)
    assert r["n_sites"] == 30 and r["n_plus"] == 15 and r["n_minus"] == 15 and r["n_evaluated"] == 30
    assert r["site_accuracy"] > 0.75  # first 4 bases at chance, the other 11 known
    assert r["control_accuracy"] < 0.35 and r["n_controls"] == 30
    assert r["site_bits_per_base"] < 1.0 < r["control_bits_per_base"]
    assert r["true_vs_shuffled_win_rate"] > 0.9 and r["p_value"] < 1e-6
    acc = np.array(r["per_position"]["site_accuracy"])
    # Motif orientation: a plus-strand site is read from motif position 1, a minus-strand one from
    # position 15, so the oracle's four chance positions are 1-4 on one strand and 12-15 on the other.
    np.testing.assert_allclose(acc[:4], 0.625, atol=0.06)
    np.testing.assert_allclose(acc[-4:], 0.625, atol=0.06)
    assert np.all(acc[4:-4] > 0.95)
    assert len(r["per_position"]["information_content"]) == 15


def test_masked_oracle_that_knows_the_motif_reaches_high_site_accuracy():
    records, motif, planted = planted_records(seed=1)
    scorer = FunctionScorer(masked_motif_oracle(planted), "masked")
    r, = motif_masking(records, scorer, [motif], window=100, batch_size=16, progress=False)
    assert r["n_evaluated"] == 30
    assert r["site_accuracy"] > 0.99 and abs(r["control_accuracy"] - 0.25) < 1e-9
    assert r["true_vs_shuffled_win_rate"] > 0.95 and r["p_value"] < 1e-6


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_uniform_predictor_sits_at_chance(objective):
    records, motif, _ = planted_records(seed=2)
    scorer = FunctionScorer(uniform_logp, objective)
    r, = motif_masking(records, scorer, [motif], window=64, progress=False)
    assert r["site_accuracy"] == pytest.approx(0.25) and r["control_accuracy"] == pytest.approx(0.25)
    assert r["site_bits_per_base"] == pytest.approx(2.0, abs=1e-6)
    assert r["true_vs_shuffled_win_rate"] == pytest.approx(0.5) and r["p_value"] == 1.0
    lk = likelihood(records, scorer, window=64, progress=False)
    assert lk.bits_per_base == pytest.approx(2.0, abs=1e-6) and lk.accuracy == pytest.approx(0.25)


def test_controls_avoid_sites_and_take_the_closest_gc():
    records, motif, _ = planted_records(seed=3)
    r, = motif_masking(records, FunctionScorer(uniform_logp), [motif], window=64, progress=False)
    assert r["n_controls"] == r["n_evaluated"] == len(r["_controls"])
    gc = lambda ri, s, e: int(np.isin(records[ri].ids[s:e], (5, 6)).sum())  # noqa: E731
    for ri, s, e, site in r["_controls"]:
        assert ri == site.record_index and e - s == site.end - site.start
        assert all(not (s < o.end and o.start < e) for o in r["_sites"] if o.record_index == ri)
        # the consensus is 13/15 GC: no random span matches, so the control is the most GC-rich one
        best = max(gc(ri, i, i + 15) for i in range(len(records[ri]) - 15)
                   if all(not (i < o.end and o.start < i + 15) for o in r["_sites"] if o.record_index == ri))
        assert gc(ri, s, e) == min(best, gc(ri, site.start, site.end))


def test_motif_without_sites_is_listed():
    records, motif, _ = planted_records(n_records=4)
    motifs = load_motifs(SUBSET, ["MA0139.2", "MA0140.3"])
    res = motif_masking(records, FunctionScorer(uniform_logp), motifs, threshold="p:1e-7", window=64, progress=False)
    gata = res[1]
    assert [m["id"] for m in res] == ["MA0139.2", "MA0140.3"]
    assert gata["n_sites"] == 0 and gata["site_accuracy"] is None and gata["p_value"] is None


def test_span_windows_hold_the_span_and_give_a_causal_model_left_context():
    from reformer_seq.tasks.evaluation.likelihood import span_window

    for length, start, w, window in [(200, 0, 15, 64), (200, 1, 15, 16), (200, 90, 15, 16), (200, 185, 15, 64),
                                     (30, 10, 15, 512), (1000, 500, 15, 64)]:
        for causal in (True, False):
            lo, hi = span_window(length, start, start + w, window, causal)
            assert 0 <= lo <= start and start + w <= hi <= length
            assert hi - lo <= max(window, w + 1)
            if causal and start > 0:
                assert lo < start


# ---------------------------------------------------------------------- likelihood conventions
def test_causal_rows_predict_the_next_token_and_every_base_is_scored_once():
    rng = np.random.default_rng(5)
    ids = rng.integers(4, 8, 1000).astype(np.uint8)
    ids[100:110] = TOK.n_id
    records = [EncodedRecord("a", "", ids), EncodedRecord("b", "", rng.integers(4, 8, 37).astype(np.uint8))]
    lk = likelihood(records, FunctionScorer(lookahead_cheat, "causal"), window=64, batch_size=5, progress=False)
    assert lk.accuracy == pytest.approx(1.0)
    expected = [(r.ids >= 4) & (r.ids <= 7) for r in records]
    for e in expected:
        e[0] = False  # a record's first base has no left context
    assert all(np.array_equal(s, e) for s, e in zip(lk.scored, expected))
    assert lk.n_bases == sum(int(e.sum()) for e in expected)


def test_masked_likelihood_masks_a_share_of_the_bases():
    ids = np.random.default_rng(6).integers(4, 8, 5000).astype(np.uint8)
    seen = []

    def spy(tokens):
        seen.append(tokens.copy())
        return uniform_logp(tokens)

    lk = likelihood([EncodedRecord("a", "", ids)], FunctionScorer(spy, "masked"), window=500, mask_prob=0.15,
                    progress=False)
    assert 0.12 < lk.n_bases / 5000 < 0.18
    assert sum(int((t == MASK_ID).sum()) for t in seen) == lk.n_bases
    assert lk.bits_per_base == pytest.approx(2.0, abs=1e-6)


# ---------------------------------------------------------------------- baselines and statistics
def test_markov_matches_a_hand_count():
    train = TOK.encode("ACGTACGAAC")
    m = MarkovModel.fit([Segment(train)], order=1, pseudocount=0.5)
    # pairs: AC AC CG CG GT GA TA AA AC -> after A: C x3, A x1 (4); after C: G x2 (2)
    test = TOK.encode("ACAN" + "GA")
    logp, correct = m.score(test, np.array([1, 2, 5]))
    np.testing.assert_allclose(logp, np.log2([(3 + 0.5) / (4 + 2), (0 + 0.5) / (2 + 2), (1 + 0.5) / (2 + 2)]))
    # after G: T x1, A x1 -> a tie between A and T, split evenly
    np.testing.assert_allclose(correct, [1.0, 0.0, 0.5])
    # position 4 follows an N: it backs off to order 0 (A 4, C 3, G 2, T 1 of 10 bases)
    lp0, _ = m.score(test, np.array([4]))
    assert lp0[0] == pytest.approx(math.log2((2 + 0.5) / (10 + 2)))
    assert m.n_train == 10


def test_markov_counts_stay_inside_segments_and_dense_equals_sparse():
    ids = np.random.default_rng(8).integers(4, 8, 3000).astype(np.uint8)
    seg = [Segment(ids, 0, 2000)]
    dense = MarkovModel.fit(seg, 3)
    assert dense.tables[3].dense.sum() == 2000 - 3  # 4-mers wholly inside [0, 2000)
    with use_policy(markov_dense_max_cells=1):  # every order sparse
        sparse = MarkovModel.fit(seg, 3)
    assert sparse.tables[3].dense is None
    pos = np.arange(2000, 3000)
    np.testing.assert_allclose(dense.score(ids, pos)[0], sparse.score(ids, pos)[0])


@pytest.mark.slow
def test_markov_order6_on_ecoli_gives_the_reference_1_934(ecoli_records):
    table = markov_holdout_table(ecoli_records, orders=[0, 6])
    assert round(table[6], 3) == 1.934
    assert round(table[0], 3) == 2.000


def test_sign_test_matches_the_binomial_tail():
    for w, l in [(0, 0), (5, 5), (9, 1), (30, 10), (700, 300)]:
        n = w + l
        exact = sum(math.comb(n, i) for i in range(w, n + 1)) / 2 ** n if n else 1.0
        assert sign_test_pvalue(w, l) == pytest.approx(min(1.0, exact), rel=1e-9)


# ---------------------------------------------------------------------- the ReformerLM adapter
def tiny_model(causal: bool = True) -> ReformerLM:
    return build_tiny_model(0, depth=1, max_seq_len=256, attn_layers=["local"], causal=causal)


def test_model_scorer_is_padding_invariant_and_normalised():
    scorer = ModelScorer(tiny_model(), device="cpu")
    rng = np.random.default_rng(0)
    a, b = rng.integers(4, 8, 50), rng.integers(4, 8, 31)
    batch = np.zeros((2, 50), np.int64)
    batch[0], batch[1, :31] = a, b
    together = scorer(batch)
    alone = scorer(b[None])
    np.testing.assert_allclose(together[1, :31], alone[0], atol=1e-5)
    np.testing.assert_allclose(np.exp(together).sum(-1), 1.0, atol=1e-5)
    assert scorer.objective == "causal" and scorer.max_len == 256


# ---------------------------------------------------------------------- end to end
def write_subset(path: Path, src: Path, n: int) -> Path:
    recs = list(read_records(src))[:n]
    path.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in recs))
    return path


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    train = write_subset(root / "train.fa", PEAKS, 60)
    causal = tiny_model(True).save_pretrained(root / "causal", meta={
        "objective": "causal", "step": 0,
        "train_data": {"paths": [str(train)], "val_fraction": 0.1, "alphabet": "nucleotide", "seq_len": 128}})
    masked = tiny_model(False).save_pretrained(root / "masked")  # no objective/train_data: fallbacks
    return {"causal": causal, "masked": masked, "train": train, "root": root}


REQUIRED = ["id", "name", "n_sites", "site_accuracy", "control_accuracy", "site_bits_per_base",
            "control_bits_per_base", "true_vs_shuffled_win_rate", "p_value"]


@pytest.mark.slow
def test_cli_causal_checkpoint_on_ctcf_peaks(tiny_checkpoints, tmp_path):
    fasta = write_subset(tmp_path / "peaks.fa", PEAKS, 40)
    out = tmp_path / "report"
    res = invoke("evaluate", str(fasta), "--checkpoint", str(tiny_checkpoints["causal"]),
                 "--motifs", str(CTCF_JASPAR), "--out", str(out), "--batch-size", "32",
                 "--quiet")
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["objective"] == "causal" and rep["window"] == 128 and rep["n_records"] == 40
    assert rep["n_bases"] == 40 * 199 and 1.5 < rep["bits_per_base"] < 6
    b = rep["baselines"]
    assert 1.8 < b["order0"]["bits_per_base"] < 2.1 and b["order0"]["n_bases"] == rep["n_bases"]
    assert b["markov"]["order"] in range(13) and b["markov"]["bits_per_base"] > 0
    assert set(b["markov"]["val_bits_per_base_by_order"]) == {str(k) for k in range(13)}
    m, = rep["motifs"]
    assert all(k in m for k in REQUIRED)
    assert (m["id"], m["name"]) == ("MA0139.2", "CTCF") and m["n_sites"] > 10
    assert 0 <= m["site_accuracy"] <= 1 and 0 <= m["true_vs_shuffled_win_rate"] <= 1 and 0 < m["p_value"] <= 1
    assert m["n_controls"] == m["n_evaluated"] and m["control_gc_matched_fraction"] > 0.7
    assert (out / m["profile_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| MA0139.2 | CTCF |" in md and "Markov order" in md
    assert "MA0139.2 CTCF" in res.output and "bits/base" in res.output
    assert not list(out.glob(".*"))  # no temporary files left


def test_cli_masked_checkpoint_without_training_data(tiny_checkpoints, tmp_path):
    fasta = write_subset(tmp_path / "peaks.fa", PEAKS, 12)
    out = tmp_path / "report"
    res = invoke("evaluate", str(fasta), "--checkpoint", str(tiny_checkpoints["masked"]),
                 "--motifs", str(SUBSET), "--motif-ids", "MA0139.2,MA0140.3",
                 "--out", str(out), "--quiet", "--batch-size", "32")
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["objective"] == "masked" and "masked_accuracy" in rep and "masked_bits_per_base" in rep
    assert "markov" not in rep["baselines"] and "train_data" in rep["baselines"]["note"]
    assert rep["baselines"]["order0"]["in_sample"] is True
    ids = [m["id"] for m in rep["motifs"]]
    assert ids == ["MA0139.2", "MA0140.3"]
    assert all(all(k in m for k in REQUIRED) for m in rep["motifs"])


def test_python_api_val_split(tiny_checkpoints, tmp_path):
    from reformer_seq.tasks.evaluation.evaluate import evaluate_checkpoint

    rep = evaluate_checkpoint(tiny_checkpoints["train"], tiny_checkpoints["causal"], None, split="val",
                              progress=False, batch_size=64)
    assert rep["split"] == "val" and rep["n_bases"] == 60 * 19  # last 20 of 200 bases, first unscored
    assert rep["motifs"] == []


@pytest.mark.parametrize("args,message", [
    (["--motifs", "nope.jaspar"], "motif file not found"),
    (["--motifs", str(CTCF_JASPAR), "--motif-ids", "MA9999.1"], "not found in"),
    (["--motifs", str(CTCF_JASPAR), "--threshold", "p:7"], "threshold"),
    (["--motif-ids", "MA0139.2"], "without --motifs"),
])
def test_cli_errors_are_one_line_exit_2(tiny_checkpoints, tmp_path, args, message):
    res = invoke("evaluate", str(PEAKS), "--checkpoint", str(tiny_checkpoints["causal"]),
                 "--out", str(tmp_path / "r"), *args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("seqformer: error:") and message in lines[0], res.output
    assert not (tmp_path / "r" / "report.json").exists()


def test_cli_help_teaches_with_examples():
    res = invoke("evaluate", "--help")
    assert res.exit_code == 0 and "Examples:" in res.output and "--motif-ids" in res.output


def test_evaluate_records_accepts_any_scorer():
    records, motif, _ = planted_records(n_records=6)
    rep = evaluate_records(records, FunctionScorer(uniform_logp, "causal", max_len=100), [motif], progress=False)
    assert rep["window"] == 100 and rep["bits_per_base"] == pytest.approx(2.0)
    assert rep["motifs"][0]["n_sites"] == 6


@pytest.mark.parametrize("split", ["val", "all"])
def test_report_says_when_the_markov_order_was_chosen_on_the_scored_bases(split):
    """With --split val the Markov order is picked on the very bases scored: report.md must say so."""
    from reformer_seq.tasks.evaluation.report import report_markdown

    base = {"n_bases": 100, "bits_per_base": 1.9, "accuracy": 0.3, "fitted_on": "train.fa (train region)"}
    report = {"fasta": "x.fa", "n_records": 1, "split": split, "val_fraction": 0.1, "checkpoint": "ck",
              "checkpoint_step": 1, "objective": "causal", "window": 128, "n_bases": 100, "bits_per_base": 1.9,
              "accuracy": 0.3, "baselines": {"order0": dict(base),
                                             "markov": {**base, "order": 2, "val_bits_per_base_by_order": {"2": 1.9}}}}
    md = report_markdown(report)
    assert "Markov order 2" in md
    assert ("slightly optimistic" in md) == (split == "val")
