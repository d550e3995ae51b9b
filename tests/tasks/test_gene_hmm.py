"""The gene HMM baseline: stop codons, the forward algorithm against brute force, normalisation,
windowed vs exact scoring, oracles on E. coli and planted ORFs, and the two commands that use it."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from helpers import DATA, invoke, save_causal_checkpoint, tiny_model
from reformer_seq.genome.annotation import CDS
from reformer_seq.genome.tokenizers import NucleotideTokenizer
from reformer_seq.runtime.policy import use_policy
from reformer_seq.tasks.evaluation import gene_hmm as gh
from reformer_seq.tasks.evaluation.gene_hmm import GeneHMM, GeneRates, predictive_logp
from reformer_seq.tasks.evaluation.gene_hmm_baseline import GeneHMMScorer, gene_hmm_bits, segment_scores
from reformer_seq.tasks.evaluation.gene_hmm_fit import LabelledSegment, fit_gene_hmm, state_labels
from reformer_seq.tasks.evaluation.markov import MarkovModel, Segment, split_segments

GBK20 = DATA / "Ecoli_K12_MG1655_NC_000913.2_1-20kb.gbk"
TOK = NucleotideTokenizer()
BASES = list(TOK.base_ids)
COMP = str.maketrans("ACGT", "TGCA")


def rc(s: str) -> str:
    return s.translate(COMP)[::-1]


def random_model(order: int = 2, rates: GeneRates = GeneRates(0.2, 0.5, 0.3, 0.3), codon_states: bool = True,
                 initial=None, seed: int = 0) -> GeneHMM:
    """A model with random emission counts (stop rule applied) and the given rates."""
    rng = np.random.default_rng(seed)
    S = gh.n_states(codon_states)
    counts = [rng.integers(0, 20, (S, 4 ** r, 4)) for r in range(order + 1)]
    M = gh.transition_matrix(rates, codon_states)
    init = gh.stationary(M) if initial is None else initial
    return GeneHMM(order, M, init, gh.emission_probs(counts, order, 0.5), rates, 0.5, codon_states)


def one_hot(state: int, S: int = 19) -> np.ndarray:
    v = np.zeros(S)
    v[state] = 1.0
    return v


# ---------------------------------------------------------------------- hand-worked stops
@pytest.mark.parametrize("prefix,forbidden", [("ATGTA", "AG"), ("ATGTG", "A"), ("ATGTT", "")])
def test_forward_in_frame_stop_codon_has_probability_zero(prefix, forbidden):
    """Forced into frame (start in F1, genes never end): base 6 is a codon's 3rd base (F3)."""
    model = random_model(rates=GeneRates(0.2, 0.5, 0.0, 0.0), initial=one_hot(gh.F1))
    lp = predictive_logp(model, TOK.encode(prefix).astype(np.int64)[None])[0, -1]  # predicts base 6
    for i, base in enumerate("ACGT"):
        assert (lp[i] == -np.inf) == (base in forbidden), (prefix, base, lp)
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("prefix", ["GCGTT", "GCGCT", "GCGTC"])
def test_reverse_in_frame_stop_codon_has_probability_zero(prefix):
    """Reverse strand, forced into frame: bases 4-6 read forwards are one codon (Ra Rb Rc); TTA, CTA and TCA
    are TAA, TAG and TGA on the gene's strand, so A is forbidden after TT, CT and TC."""
    model = random_model(rates=GeneRates(0.2, 0.5, 0.0, 0.0), initial=one_hot(gh.RA))
    lp = predictive_logp(model, TOK.encode(prefix).astype(np.int64)[None])[0, -1]
    assert lp[0] == -np.inf and np.all(np.isfinite(lp[1:]))
    assert rc(prefix[-2:] + "A") in ("TAA", "TAG", "TGA")


def test_emission_tables_forbid_exactly_the_stops():
    model = random_model(order=3)
    off = gh.context_offsets(3)
    zeros = set()
    for r in range(2, 4):
        for ctx in range(4 ** r):
            for s in range(model.n_states):
                for x in np.flatnonzero(model.emissions[off[r] + ctx, s] == 0):
                    zeros.add((s, "ACGT"[(ctx >> 2) & 3] + "ACGT"[ctx & 3] + "ACGT"[x]))
    assert zeros == {(gh.F3, c) for c in ("TAA", "TAG", "TGA")} | {(gh.RC, c) for c in ("TTA", "CTA", "TCA")}
    assert (model.emissions[:off[2]] > 0).all()  # no rule without two bases of context


# ---------------------------------------------------------------------- the forward algorithm
def brute_force_predictive(model: GeneHMM, tokens: np.ndarray) -> np.ndarray:
    """(L, 4) P(x_{t+1} = b | x_0..x_t) by summing over every state path with non-zero probability."""
    b, valid, rows = model.context_rows(tokens[None])
    b, valid, rows = b[0], valid[0], rows[0]
    E, M, L = model.emissions, model.transitions, len(tokens)
    out = np.zeros((L, 4))
    norm = np.zeros(L)

    def walk(path: tuple, weight: float) -> None:
        t = len(path) - 1
        s = path[-1]
        w = weight * (E[rows[t], s, b[t]] if valid[t] else 1.0)
        if w == 0:
            return
        nxt = np.flatnonzero(M[s])
        out[t] += w * sum(M[s, n] * E[rows[t + 1], n] for n in nxt)
        norm[t] += w
        if t + 1 < L:
            for n in nxt:
                walk(path + (n,), w * M[s, n])

    for s0 in np.flatnonzero(model.initial):
        walk((s0,), model.initial[s0])
    return out / norm[:, None]


@pytest.mark.parametrize("seq,codon_states", [("ATGAAATG", True), ("CTTANCAT", True), ("GATTACA", False)])
def test_forward_equals_brute_force_over_state_paths(seq, codon_states):
    model = random_model(order=2, codon_states=codon_states, seed=len(seq))
    tokens = TOK.encode(seq).astype(np.int64)
    want = np.log(brute_force_predictive(model, tokens))
    got = predictive_logp(model, tokens[None])[0]
    np.testing.assert_allclose(got, want, atol=1e-9, rtol=0)


def test_predictions_sum_to_one_and_skip_n_and_padding():
    model = random_model(order=3, seed=3)
    rng = np.random.default_rng(1)
    x = rng.integers(4, 9, (5, 300))  # N (8) included
    x[2, 250:] = 0  # right padding
    out = GeneHMMScorer(model)(x)
    assert out.shape == (5, 300, TOK.vocab_size)
    np.testing.assert_allclose(np.exp(out[..., BASES]).sum(-1), 1.0, atol=1e-12)
    assert np.all(out[..., [0, 1, 2, 3, 8]] == -np.inf)
    alone = GeneHMMScorer(model)(x[2:3, :250])
    np.testing.assert_allclose(out[2, :250], alone[0], atol=1e-12)  # padding never changes earlier rows


# ---------------------------------------------------------------------- fitting and oracles
@pytest.fixture(scope="module")
def gbk20():
    from reformer_seq.genome.annotation import read_cds
    from reformer_seq.genome.encoded import load_genome

    rec, = load_genome(GBK20)
    return rec, read_cds(GBK20)[rec.id]


def test_labels_follow_the_annotation(gbk20):
    rec, cds = gbk20
    seg = Segment(rec.ids)
    lab = state_labels(seg, cds)
    fwd = next(c for c in cds if c.strand == 1)
    assert list(lab[fwd.start:fwd.start + 6]) == [7, 8, 9, gh.F1, gh.F2, gh.F3]
    assert list(lab[fwd.end - 3:fwd.end]) == [10, 11, 12]
    rev = next(c for c in cds if c.strand == -1)
    assert TOK.decode(rec.ids[rev.start:rev.start + 3]) in ("TTA", "CTA", "TCA")
    assert list(lab[rev.start:rev.start + 6]) == [13, 14, 15, gh.RA, gh.RB, gh.RC]
    assert TOK.decode(rec.ids[rev.end - 3:rev.end]) in ("CAT", "CAC", "CAA")  # ATG GTG TTG


def test_windowed_scoring_matches_the_exact_forward(gbk20):
    rec, cds = gbk20
    model = fit_gene_hmm([LabelledSegment(Segment(rec.ids), cds)], order=3)
    lo, hi = 1000, 16000
    exact = predictive_logp(model, np.asarray(rec.ids[:hi]).astype(np.int64)[None])[0]
    tgt = np.asarray(rec.ids[lo:hi]).astype(np.int64) - 4
    want = exact[np.arange(lo, hi) - 1, tgt] / math.log(2)
    with use_policy(gene_hmm_window=1000, gene_hmm_burn_in=300, gene_hmm_batch=4):
        got, _ = segment_scores(model, rec.ids, lo, hi)
    assert abs(got.mean() - want.mean()) < 1e-4  # bits per base
    assert np.abs(got - want).max() < 0.05


def test_gene_hmm_beats_the_markov_chain_on_a_held_out_genbank_stretch(gbk20):
    rec, cds = gbk20
    train, val = split_segments([rec], 0.25)
    hmm = fit_gene_hmm([LabelledSegment(train[0], cds)], order=2)
    markov = MarkovModel.fit(train, 2)
    assert gene_hmm_bits(hmm, val) < markov.bits_per_base(val) - 0.02


@pytest.mark.slow
def test_gene_hmm_beats_markov_on_ecoli_with_prodigal_calls(ecoli_records):
    """The oracle of issue 27: fitted on the first 90% (Prodigal's calls there), scored on the last 10%."""
    from reformer_seq.tasks.evaluation.gene_hmm_baseline import fit_gene_baseline
    from reformer_seq.tasks.evaluation.markov import BaselineData

    train, val = split_segments(ecoli_records, 0.1)
    model, info = fit_gene_baseline(BaselineData(train, val, "ecoli"), order=2)
    assert info["fitted_on"] == "pyrodigal calls" and info["n_training_genes"] > 3000
    hmm_bits = gene_hmm_bits(model, val)
    assert hmm_bits < MarkovModel.fit(train, 2).bits_per_base(val) - 0.05
    assert hmm_bits < 1.934  # the best Markov chain (order 6)


def planted_genome(n_genes: int, seed: int) -> tuple[str, list[CDS]]:
    """Uniform intergenic DNA with ORFs of strongly biased codon usage on both strands."""
    rng = np.random.default_rng(seed)
    sense = ["".join(c) for c in itertools.product("ACGT", repeat=3) if "".join(c) not in ("TAA", "TAG", "TGA")]
    usage = np.random.default_rng(99).dirichlet(np.full(len(sense), 0.2))
    parts, genes, pos = [], [], 0
    for _ in range(n_genes):
        inter = "".join(rng.choice(list("ACGT"), int(rng.integers(150, 400))))
        gene = "ATG" + "".join(rng.choice(sense, int(rng.integers(100, 300)), p=usage)) + "TAA"
        strand = int(rng.choice([1, -1]))
        parts += [inter, gene if strand == 1 else rc(gene)]
        genes.append(CDS("g", pos + len(inter), pos + len(inter) + len(gene), strand))
        pos += len(inter) + len(gene)
    parts.append("".join(rng.choice(list("ACGT"), 200)))
    return "".join(parts), genes


def test_planted_orfs_frame_is_inferred():
    seq, genes = planted_genome(60, seed=0)
    ids = TOK.encode(seq)
    model = fit_gene_hmm([LabelledSegment(Segment(ids), genes)], order=2)
    test, test_genes = planted_genome(8, seed=1)
    tids = TOK.encode(test).astype(np.int64)
    lp = predictive_logp(model, tids[None])[0]
    markov = MarkovModel.fit([Segment(ids)], 2)
    for g in test_genes:
        q = np.arange(g.start + 90, g.end - 3)  # well inside the ORF
        hmm_bits = -lp[q - 1, tids[q] - 4].mean() / math.log(2)
        # the oracle knows where the gene starts, so its frame and strand
        start = g.start - 1
        state = gh.FSTART if g.strand == 1 else gh.RSTOP
        oracle_model = GeneHMM(model.order, model.transitions, one_hot(state), model.emissions, model.rates)
        olp = predictive_logp(oracle_model, tids[None, start + 1:])[0]
        oracle_bits = -olp[q - 1 - (start + 1), tids[q] - 4].mean() / math.log(2)
        markov_bits = -markov.score(tids, q)[0].mean()
        assert hmm_bits < oracle_bits + 0.05, (g, hmm_bits, oracle_bits)
        assert hmm_bits < markov_bits - 0.2, (g, hmm_bits, markov_bits)


# ---------------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def genbank_checkpoint(tmp_path_factory):
    """A tiny causal model whose training data is the 20 kb annotated GenBank stretch of E. coli."""
    model = tiny_model(0, depth=1, max_seq_len=256, attn_layers=["local"], causal=True)
    root = tmp_path_factory.mktemp("gene_ck")
    return save_causal_checkpoint(model, root / "ck", GBK20, 256)


def test_cli_evaluate_reports_the_gene_hmm(genbank_checkpoint, tmp_path):
    res = invoke("evaluate", str(GBK20), "--checkpoint", str(genbank_checkpoint), "--split",
                 "val", "--out", str(tmp_path / "r"), "--gene-order", "2", "--quiet")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    g = rep["baselines"]["gene_hmm"]
    assert g["fitted_on"] == "GenBank CDS" and g["order"] == 2 and g["n_states"] == 19 and g["n_parameters"] > 0
    assert g["n_bases"] == rep["n_bases"] and 1.5 < g["bits_per_base"] < 2.1
    assert "gene HMM order 2" in res.output and "gene HMM" in (tmp_path / "r" / "report.md").read_text()
    res = invoke("evaluate", str(GBK20), "--checkpoint", str(genbank_checkpoint), "--split",
                 "val", "--out", str(tmp_path / "r2"), "--no-gene-hmm", "--quiet")
    assert res.exit_code == 0 and "gene_hmm" not in json.loads((tmp_path / "r2" / "report.json").read_text())["baselines"]


def test_cli_score_variants_adds_llr_gene(genbank_checkpoint, tmp_path):
    from reformer_seq.genome.fasta import read_records

    seq = next(read_records(GBK20)).sequence.upper()
    rows = [(p, seq[p - 1], "G" if seq[p - 1] != "G" else "T") for p in (400, 1500, 5000, 9000)]
    vcf = tmp_path / "v.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n##contig=<ID=NC_000913.2>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   + "".join(f"NC_000913.2\t{p}\t.\t{r}\t{a}\t.\tPASS\t.\n" for p, r, a in rows))
    args = ["score-variants", str(vcf), "--reference", str(GBK20), "--checkpoint", str(genbank_checkpoint),
            "--window", "256", "--baseline", "markov", "--baseline", "gene", "--baseline", "prodigal", "--quiet"]
    res = invoke(*args, "--out", str(tmp_path / "s.tsv"))
    assert res.exit_code == 0, res.output
    lines = [l for l in (tmp_path / "s.tsv").read_text().splitlines() if not l.startswith("#")]
    head, body = lines[0].split("\t"), [dict(zip(lines[0].split("\t"), l.split("\t"))) for l in lines[1:]]
    assert head[-3:] == ["llr_markov", "llr_gene", "llr_prodigal"] and len(body) == 4
    assert all(math.isfinite(float(r["llr_gene"])) and math.isfinite(float(r["llr_prodigal"])) for r in body)
    assert any(float(r["llr_gene"]) != 0 for r in body)
    res = invoke(*args, "--out", str(tmp_path / "s.vcf"))
    assert res.exit_code == 0, res.output
    assert "SEQFORMER_LLR_GENE" in (tmp_path / "s.vcf").read_text()


def test_llr_gene_is_the_exact_difference_of_window_log_likelihoods(gbk20):
    """The gene HMM through score-variants' engine equals brute force: whole REF and ALT windows, both strands."""
    from reformer_seq.genome.encoded import EncodedRecord
    from reformer_seq.tasks.scoring.variant_baselines import ExtraBaseline
    from reformer_seq.tasks.scoring.variant_effects import causal_llr, variant_window
    from reformer_seq.tasks.scoring.variants import Allele, score_alleles

    rec, cds = gbk20
    scorer = GeneHMMScorer(fit_gene_hmm([LabelledSegment(Segment(rec.ids), cds)], order=2))
    seq, W = TOK.decode(rec.ids[:3000]), 512
    extra = ExtraBaseline("gene", "", lambda jobs, seqs, w: causal_llr(jobs, seqs, scorer, w, batch_size=3))
    variants = [(1000, seq[1000], "A" if seq[1000] != "A" else "C"), (1500, seq[1500:1503], seq[1500]),
                (2200, seq[2200], seq[2200] + "GT")]
    alleles = [Allele(0, "g", p + 1, ".", r, a) for p, r, a in variants]
    score_alleles(alleles, [EncodedRecord("g", "", TOK.encode(seq))], scorer, W, "both", None, 4, False, [extra])

    def loglik(s: str) -> float:
        ids = TOK.encode(s).astype(np.int64)
        lp = scorer(ids[None])[0]
        return float(lp[np.arange(len(ids) - 1), ids[1:]].sum()) / math.log(2)

    def brute(s: str, p: int, r: str, a: str) -> float:
        lo, hi = variant_window(len(s), p, W)
        return loglik(s[lo:p] + a + s[p + len(r):hi]) - loglik(s[lo:hi])

    for (p, r, a), al in zip(variants, alleles):
        fwd, rev = brute(seq, p, r, a), brute(rc(seq), len(seq) - p - len(r), rc(r), rc(a))
        assert al.extra["gene"] == pytest.approx([fwd, rev], abs=1e-8)
        assert [al.llr_forward, al.llr_reverse] == pytest.approx([fwd, rev], abs=1e-8)
        assert al.llr_extra("gene", 2) == pytest.approx((fwd + rev) / 2, abs=1e-8)
