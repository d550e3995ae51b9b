"""score-variants: the fast path against brute-force window likelihoods, strand mirroring, flags, outputs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from helpers import DATA, PHIX, invoke, save_causal_checkpoint, sharp_model
from reformer_seq.tasks.evaluation.likelihood import LN2, ModelScorer
from reformer_seq.tasks.evaluation.markov import MarkovModel, Segment
from reformer_seq.genome.encoded import EncodedRecord
from reformer_seq.genome.fasta import read_records
from reformer_seq.genome.tokenizers import NucleotideTokenizer
from reformer_seq.tasks.scoring.variant_effects import variant_window
from reformer_seq.tasks.scoring.variants import Allele, score_alleles

TOK = NucleotideTokenizer()
W = 256
COMP = str.maketrans("ACGT", "TGCA")


def rc(s: str) -> str:
    return s.translate(COMP)[::-1]


@pytest.fixture(scope="module")
def genome() -> str:
    return next(read_records(PHIX)).sequence[:1500].upper()


@pytest.fixture(scope="module")
def scorer():
    return ModelScorer(sharp_model(True), device="cpu")


def window_loglik(scorer, seq: str) -> float:
    """log2 P of every base of ``seq`` but the first (one pass, nothing shared)."""
    ids = TOK.encode(seq).astype(np.int64)
    lp = scorer(ids[None])[0]  # (L, V)
    return float(lp[np.arange(len(ids) - 1), ids[1:]].sum()) / LN2


def brute_force(scorer, seq: str, p: int, ref: str, alt: str) -> float:
    """Difference of the two full windows' log-likelihoods (REF window placed as the fast path places it)."""
    lo, hi = variant_window(len(seq), p, W)
    assert seq[p:p + len(ref)] == ref
    return window_loglik(scorer, seq[lo:p] + alt + seq[p + len(ref):hi]) - window_loglik(scorer, seq[lo:hi])


def markov_brute_force(model: MarkovModel, seq: str, p: int, ref: str, alt: str) -> float:
    lo, hi = variant_window(len(seq), p, W)
    total = 0.0
    for s, sign in ((seq[lo:p] + alt + seq[p + len(ref):hi], 1), (seq[lo:hi], -1)):
        ids = TOK.encode(s)
        total += sign * float(model.score(ids, np.arange(1, len(ids)))[0].sum())
    return total


def alleles_for(seq: str, chrom: str = "g") -> list[Allele]:
    cases = [(700, 1, "T"), (700, 1, "GATTACA"), (900, 6, None), (1100, 3, "CAG"), (3, 1, "A"), (1490, 4, "A"),
             (1480, 1, "TTTT")]  # SNV, insertion, deletion, MNV, near both contig ends
    out = []
    for i, (p, r, alt) in enumerate(cases):
        ref = seq[p:p + r]
        alt = alt if alt is not None else ref[0]
        if alt == ref[:len(alt)] and len(alt) == len(ref):
            alt = "T" if ref != "T" else "G"
        out.append(Allele(i, chrom, p + 1, f"v{i}", ref, alt))
    return out


def test_fast_path_equals_brute_force_on_both_strands(genome, scorer):
    alleles = alleles_for(genome)
    train = [Segment(TOK.encode(genome))]
    markov = MarkovModel.fit(train, 3)
    score_alleles(alleles, [EncodedRecord("g", "", TOK.encode(genome))], scorer, W, "both", markov, batch_size=3,
                  progress=False)
    L = len(genome)
    for a in alleles:
        p = a.pos - 1
        fwd = brute_force(scorer, genome, p, a.ref, a.alt)
        rev = brute_force(scorer, rc(genome), L - p - len(a.ref), rc(a.ref), rc(a.alt))
        assert a.llr_forward == pytest.approx(fwd, abs=2e-3), (a, fwd)
        assert a.llr_reverse == pytest.approx(rev, abs=2e-3), (a, rev)
        assert abs(fwd) > 0.05  # the model is sharp enough for the comparison to mean something
        assert a.llr(2) == pytest.approx((fwd + rev) / 2, abs=2e-3)
        mf = markov_brute_force(markov, genome, p, a.ref, a.alt)
        mr = markov_brute_force(markov, rc(genome), L - p - len(a.ref), rc(a.ref), rc(a.alt))
        assert a.markov[0] == pytest.approx(mf, abs=1e-9) and a.markov[1] == pytest.approx(mr, abs=1e-9)
    near = [a.id for a in alleles if any(c == "near_end" for c, _ in a.notes)]
    assert near == ["v4", "v5", "v6"] and all(a.scored for a in alleles)


def test_mirror_variant_on_the_reverse_complemented_reference_swaps_strands(genome, scorer):
    a = alleles_for(genome)
    L = len(genome)
    m = [Allele(x.row, "g", L - (x.pos - 1) - len(x.ref) + 1, x.id, rc(x.ref), rc(x.alt)) for x in a]
    score_alleles(a, [EncodedRecord("g", "", TOK.encode(genome))], scorer, W, "both", progress=False)
    score_alleles(m, [EncodedRecord("g", "", TOK.encode(rc(genome)))], scorer, W, "both", progress=False)
    for x, y in zip(a, m):
        assert x.llr_forward == pytest.approx(y.llr_reverse, abs=1e-4)
        assert x.llr_reverse == pytest.approx(y.llr_forward, abs=1e-4)
        assert x.llr(2) == pytest.approx(y.llr(2), abs=1e-4)
        assert abs(x.llr_forward - x.llr_reverse) > 1e-3  # the two strands really differ


def test_masked_model_scores_snvs_at_the_masked_position(genome):
    from reformer_seq.tasks.evaluation.likelihood import span_window
    from reformer_seq.genome.tokenizers import MASK_ID

    sc = ModelScorer(sharp_model(False), device="cpu")
    p = 500
    ref = genome[p]
    alts = [b for b in "ACGT" if b != ref]
    alleles = [Allele(0, "g", p + 1, ".", ref, b) for b in alts] + [Allele(1, "g", 801, ".", genome[800:802], "A")]
    score_alleles(alleles, [EncodedRecord("g", "", TOK.encode(genome))], sc, W, "forward", progress=False)
    lo, hi = span_window(len(genome), p, p + 1, W, causal=False)
    ids = TOK.encode(genome[lo:hi]).astype(np.int64)
    ids[p - lo] = MASK_ID
    lp = sc(ids[None])[0, p - lo]
    for a in alleles[:3]:
        want = (lp[TOK.encode(a.alt)[0]] - lp[TOK.encode(ref)[0]]) / LN2
        assert a.llr_forward == pytest.approx(want, abs=1e-5)
    assert math.isnan(alleles[3].llr_forward) and alleles[3].notes[0][0] == "masked_snv_only"


# ---------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def files(tmp_path_factory, genome):
    root = tmp_path_factory.mktemp("sv")
    ref = root / "ref.fa"
    ref.write_text(f">1\n{genome}\n>2\n{genome[:600]}\n")
    ck = save_causal_checkpoint(sharp_model(True), root / "ck", ref, W)
    g = genome
    rows = [("1", 701, "rs1", g[700], f"{'T' if g[700] != 'T' else 'G'},<DEL>"),  # multi-allelic + symbolic
            ("1", 801, ".", g[800:802], g[800]),  # deletion
            ("1", 901, "bad", "A" if g[900] != "A" else "C", "G"),  # REF mismatch
            ("1", 1001, ".", g[1000], "*"),
            ("1", 1101, ".", g[1100], f"{g[1100]}[2:100["),  # breakend
            ("2", 301, ".", g[300], "ACG")]  # insertion on the second contig
    vcf = root / "calls.vcf"
    head = ("##fileformat=VCFv4.2\n##contig=<ID=1>\n##contig=<ID=2>\n"
            "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
    vcf.write_text(head + "".join(f"{c}\t{p}\t{i}\t{r}\t{a}\t.\tPASS\t.\n" for c, p, i, r, a in rows))
    return {"ref": ref, "ck": ck, "vcf": vcf, "root": root}


def read_tsv(path: Path) -> list[dict[str, str]]:
    lines = [l for l in path.read_text().splitlines() if not l.startswith("#")]
    head = lines[0].split("\t")
    return [dict(zip(head, l.split("\t"))) for l in lines[1:]]


def test_cli_tsv_and_vcf_agree_and_flag_what_is_not_scored(files, tmp_path):
    import pysam

    args = [str(files["vcf"]), "--reference", str(files["ref"]), "--checkpoint", str(files["ck"]), "--window",
            str(W), "--baseline", "markov", "--quiet"]
    res = invoke("score-variants", *args, "--out", str(tmp_path / "s.tsv"))
    assert res.exit_code == 0, res.output
    text = (tmp_path / "s.tsv.json").read_text()  # the meaning is in the sidecar; the TSV starts with its header
    assert "negative = the ALT allele is less likely" in text
    rows = read_tsv(tmp_path / "s.tsv")
    assert list(rows[0]) == ["chrom", "pos", "id", "ref", "alt", "llr", "llr_forward", "llr_reverse", "note",
                             "llr_markov"]
    assert [r["alt"] for r in rows][:2] == [rows[0]["alt"], "<DEL>"] and len(rows) == 7
    scored = {r["pos"] for r in rows if r["llr"] != "NA"}
    assert scored == {"701", "801", "301"}
    bad = next(r for r in rows if r["id"] == "bad")
    assert bad["llr"] == "NA" and "REF" in bad["note"] and "reference has" in bad["note"]
    assert all(r["note"] != "." for r in rows if r["llr"] == "NA")
    for r in rows:
        if r["llr"] != "NA":
            assert float(r["llr"]) == pytest.approx((float(r["llr_forward"]) + float(r["llr_reverse"])) / 2, abs=2e-4)
            assert r["llr_markov"] != "NA"
    res = invoke("score-variants", *args, "--out", str(tmp_path / "s.vcf.gz"))
    assert res.exit_code == 0, res.output
    with pysam.VariantFile(str(tmp_path / "s.vcf.gz")) as vf:
        assert "SEQFORMER_LLR" in vf.header.info and vf.header.info["SEQFORMER_LLR"].number == "A"
        assert "less likely" in vf.header.info["SEQFORMER_LLR"].description
        got = [(v if v is not None else "NA") for rec in vf for v in rec.info["SEQFORMER_LLR"]]
    want = [float(r["llr"]) if r["llr"] != "NA" else "NA" for r in rows]
    assert [g if g == "NA" else pytest.approx(g, abs=1e-3) for g in got] == want


def test_unknown_contigs_are_one_error_with_near_misses(files, tmp_path):
    vcf = tmp_path / "chr.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   "chr1\t5\t.\tA\tG\t.\t.\t.\nchr2\t5\t.\tA\tG\t.\t.\t.\n")
    res = invoke("score-variants", str(vcf), "--reference", str(files["ref"]), "--checkpoint",
                 str(files["ck"]), "--out", str(tmp_path / "x.tsv"), "--quiet")
    assert res.exit_code == 2
    assert "chr1 (reference has 1)" in res.output and "chr2 (reference has 2)" in res.output
    assert res.output.count("\n") == 1 and not (tmp_path / "x.tsv").exists()


@pytest.mark.parametrize("content, message", [("not a vcf\n", "cannot read it as VCF"), (None, "not found")])
def test_bad_vcf_is_a_clear_error(files, tmp_path, content, message):
    vcf = tmp_path / "bad.vcf"
    if content is not None:
        vcf.write_text(content)
    res = invoke("score-variants", str(vcf), "--reference", str(files["ref"]), "--checkpoint",
                 str(files["ck"]), "--out", str(tmp_path / "x.tsv"), "--quiet")
    assert res.exit_code == 2 and message in res.output


def test_bgzipped_vcf_and_bcf_give_the_same_scores(files, tmp_path):
    import pysam

    src = files["vcf"]
    with pysam.VariantFile(str(src)) as vf:
        vf.header.info.add("END", 1, "Integer", "end")  # htslib needs it to write symbolic alleles
        copies = {"gz": (tmp_path / "c.vcf.gz", "wz"), "bcf": (tmp_path / "c.bcf", "wb")}
        outs = {k: pysam.VariantFile(str(p), m, header=vf.header) for k, (p, m) in copies.items()}
        for rec in vf:
            for o in outs.values():
                o.write(rec)
        for o in outs.values():
            o.close()
    bodies = []
    for vcf in [src] + [p for p, _ in copies.values()]:
        out = tmp_path / f"{vcf.name}.tsv"
        res = invoke("score-variants", str(vcf), "--reference", str(files["ref"]), "--checkpoint",
                     str(files["ck"]), "--window", str(W), "--strand", "forward", "--quiet",
                     "--out", str(out))
        assert res.exit_code == 0, res.output
        bodies.append([l for l in out.read_text().splitlines() if not l.startswith("#")])
    assert bodies[0] == bodies[1] == bodies[2] and len(bodies[0]) == 8
    assert all(r.split("\t")[7] == "NA" for r in bodies[0][1:])  # forward only: no reverse score


def test_the_shipped_example_vcf_scores(files, tmp_path):
    res = invoke("score-variants", str(DATA / "variants" / "ecoli_example.vcf"), "--reference",
                 str(DATA / "Ecoli_K12_MG1655.fasta.gz"), "--checkpoint", str(files["ck"]),
                 "--window", str(W), "--quiet", "--out", str(tmp_path / "ex.tsv"))
    assert res.exit_code == 0, res.output
    rows = read_tsv(tmp_path / "ex.tsv")
    assert len(rows) == 32 and sum(r["llr"] == "NA" for r in rows) == 1  # only the symbolic <DEL>
    assert "31 of 32 alleles scored" in res.output


def test_alt_equal_to_ref_is_flagged_not_scored(files, tmp_path, genome):
    """A no-op record (ALT == REF, an SNV or a longer allele) keeps its row with llr NA and the
    ``alt_equals_ref`` note, in TSV and VCF; the real SNV next to it is scored."""
    import pysam

    g = genome
    vcf = tmp_path / "noop.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n##contig=<ID=1>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"1\t501\tsame\t{g[500]}\t{g[500]}\t.\tPASS\t.\n"
                   f"1\t601\tsame2\t{g[600:603]}\t{g[600:603]}\t.\tPASS\t.\n"
                   f"1\t701\treal\t{g[700]}\t{'T' if g[700] != 'T' else 'G'}\t.\tPASS\t.\n")
    args = ["score-variants", str(vcf), "--reference", str(files["ref"]), "--checkpoint", str(files["ck"]),
            "--window", str(W), "--baseline", "markov", "--quiet"]
    res = invoke(*args, "--out", str(tmp_path / "n.tsv"))
    assert res.exit_code == 0, res.output
    assert "1 of 3 alleles scored" in res.output and "alt_equals_ref 2" in res.output
    rows = {r["id"]: r for r in read_tsv(tmp_path / "n.tsv")}
    for key in ("same", "same2"):
        assert [rows[key][c] for c in ("llr", "llr_forward", "llr_reverse", "llr_markov")] == ["NA"] * 4
        assert "ALT equals REF" in rows[key]["note"]
    assert rows["real"]["llr"] != "NA" and rows["real"]["note"] == "."
    res = invoke(*args, "--out", str(tmp_path / "n.vcf"))
    assert res.exit_code == 0, res.output
    with pysam.VariantFile(str(tmp_path / "n.vcf")) as vf:
        got = {rec.id: (rec.info["SEQFORMER_LLR"][0], rec.info["SEQFORMER_NOTE"][0]) for rec in vf}
        assert "alt_equals_ref" in vf.header.info["SEQFORMER_NOTE"].description
    assert got["same"] == (None, "alt_equals_ref") and got["same2"] == (None, "alt_equals_ref")
    assert got["real"][0] is not None
