"""``seqformer embed`` and :mod:`reformer_seq.tasks.embedding`: window plans, stitching against one-pass
embedding, pooling without N, reverse-complement averaging, batching, npz/h5 outputs, the CLI
and its errors, atomic writes."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import helpers
from helpers import error_line, invoke
from reformer_seq import ReformerLM
from reformer_seq.tasks.embedding import (Window, check_window, embed_fasta, embed_sequences, load_embeddings,
                                    output_format, plan_windows)
from reformer_seq.errors import CheckpointError, InputError, SeqformerError
from reformer_seq.genome.fasta import read_records
from reformer_seq.genome.tokenizers import NucleotideTokenizer
from reformer_seq.tasks.pretrained import load_pretrained

TOK = NucleotideTokenizer()


def tiny_model(seed: int = 0, zero_positions: bool = False, **kw) -> ReformerLM:
    """helpers.tiny_model with local + LSH layers and 2,048 positions, in eval mode."""
    model = helpers.tiny_model(seed, **{**dict(max_seq_len=2048, attn_layers=["local", "lsh"], local_window=16),
                                        **kw}).eval()
    if zero_positions:  # translation-invariant: the same base context gives the same vector anywhere
        with torch.no_grad():
            model.pos_emb.row.zero_()
            model.pos_emb.col.zero_()
    return model


def random_seq(n: int, seed: int, n_runs: tuple[tuple[int, int], ...] = ()) -> str:
    s = np.random.default_rng(seed).choice(np.frombuffer(b"ACGT", np.uint8), n)
    for a, b in n_runs:
        s[a:b] = ord("N")
    return s.tobytes().decode()


def rc(seq: str) -> str:
    return TOK.decode(TOK.reverse_complement(TOK.encode(seq)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    tiny_model(max_seq_len=256).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def fasta(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    """Records of mixed length: short, longer than the window (256), with N runs, one all-N."""
    recs = [("chr_b", random_seq(700, 1, ((100, 140),))), ("a1", random_seq(60, 2)), ("zz", random_seq(300, 3)),
            ("allN", "N" * 30), ("m", random_seq(5, 4))]
    path = tmp_path_factory.mktemp("fa") / "mixed.fa.gz"
    with gzip.open(path, "wt") as f:
        for name, s in recs:
            f.write(f">{name} some description\n")
            f.writelines(s[i:i + 60] + "\n" for i in range(0, len(s), 60))
    return path, recs


# ---------------------------------------------------------------------- window plans
@pytest.mark.parametrize("length,window,overlap", [(10, 10, 2), (11, 10, 2), (1000, 256, 32), (1000, 256, 0),
                                                   (1000, 256, 200), (257, 256, 255), (5000, 100, 37)])
def test_plan_windows_partition_and_most_central(length, window, overlap):
    """Owned ranges partition the record in order; every base's owner is a window where it is
    most central (largest distance to the nearer window edge; ties: the later window); all
    windows have the full length and consecutive ones overlap by at least ``overlap``."""
    plan = plan_windows(length, window, overlap)
    assert plan[0].keep_start == 0 and plan[-1].keep_end == length and plan[-1].end == length
    for w, nxt in zip(plan, plan[1:]):
        assert w.keep_end == nxt.keep_start and w.end - nxt.start >= overlap
    for w in plan:
        assert w.end - w.start == min(window, length) and w.start <= w.keep_start < w.keep_end <= w.end
    for p in range(length):
        centrality = [min(p - w.start, w.end - 1 - p) if w.start <= p < w.end else -1 for w in plan]
        best = max(centrality)
        owner = next(i for i, w in enumerate(plan) if w.keep_start <= p < w.keep_end)
        assert centrality[owner] == best
        assert owner == max(i for i, c in enumerate(centrality) if c == best)


def test_short_record_is_one_window_and_bad_windows_are_errors():
    assert plan_windows(100, 256, 32) == [Window(0, 100, 0, 100)]
    with pytest.raises(SeqformerError, match="max_seq_len 256"):
        check_window(300, 10, 256)
    with pytest.raises(SeqformerError, match="--overlap"):
        check_window(128, 128, 256)
    with pytest.raises(SeqformerError, match="--window"):
        check_window(0, 0, 256)


# ---------------------------------------------------------------------- pooling and stitching
@pytest.mark.parametrize("rc_average", [False, True])
def test_pooled_equals_mean_of_positions_excluding_n(rc_average):
    """Pooled = mean over the stitched per-position vectors of the non-N bases, for a one-pass
    record and a windowed one (700 bases, windows of 256), with N runs."""
    model = tiny_model()
    seqs = [random_seq(700, 1, ((0, 7), (100, 140), (690, 700))), random_seq(120, 2, ((50, 51),)), "ACGTN"]
    kw = dict(window=256, overlap=40, rc_average=rc_average)
    pooled = embed_sequences(model, seqs, **kw)
    per = embed_sequences(model, seqs, pool="none", **kw)
    for s, p, q in zip(seqs, per, pooled):
        keep = np.frombuffer(s.encode(), np.uint8) != ord("N")
        np.testing.assert_allclose(q, p[keep].mean(0, dtype=np.float64), rtol=1e-5, atol=1e-6)
        assert not np.allclose(q, p.mean(0), atol=1e-4)  # N rows would change it


@pytest.mark.parametrize("causal", [False, True])
def test_windowed_equals_one_pass_for_local_attention(causal):
    """Local-only layers and zero positional encoding make the model translation-invariant with
    a receptive field of depth * local_window = 32 bases per side. With overlap 80, every owned
    base lies >= 40 bases inside its window, so windowed stitching must reproduce the one-pass
    embedding (max_seq_len 2048 >= 1500) up to float32 rounding (1e-5)."""
    model = tiny_model(zero_positions=True, attn_layers=["local"], causal=causal)
    seq = random_seq(1500, 7, ((300, 320),))
    one = embed_sequences(model, [seq], pool="none")[0]  # window = max_seq_len: one pass
    win = embed_sequences(model, [seq], pool="none", window=256, overlap=80)[0]
    assert len(plan_windows(1500, 256, 80)) > 5
    np.testing.assert_allclose(win, one, atol=1e-5, rtol=1e-5)
    pooled_one = embed_sequences(model, [seq])[0]
    pooled_win = embed_sequences(model, [seq], window=256, overlap=80)[0]
    np.testing.assert_allclose(pooled_win, pooled_one, atol=1e-5, rtol=1e-5)
    # With too little overlap for the receptive field, the seams differ: the test has teeth.
    thin = embed_sequences(model, [seq], pool="none", window=256, overlap=8)[0]
    assert np.abs(thin - one).max() > 1e-3


def test_windowed_lsh_is_exactly_the_per_window_passes():
    """With LSH layers there is no receptive-field bound (buckets come from the whole window's
    content, and their number from its length), and windows sit at positions 0..window-1 of the
    absolute positional encoding, so windowed != one-pass by design. What stitching guarantees is
    that every base comes from its owner window's own pass, bit for bit."""
    model = tiny_model()  # local + LSH, with positional encoding
    seq = random_seq(900, 11)
    ids = TOK.encode(seq)
    win = embed_sequences(model, [ids], pool="none", window=256, overlap=32)[0]
    for w in plan_windows(900, 256, 32):
        with torch.inference_mode():
            h = model.encode(torch.from_numpy(ids[w.start:w.end].astype(np.int64))[None])[0].numpy()
        np.testing.assert_array_equal(win[w.keep_start:w.keep_end], h[w.keep_start - w.start:w.keep_end - w.start])
    one = embed_sequences(model, [ids], pool="none")[0]
    assert not np.allclose(win, one, atol=1e-4)


@pytest.mark.parametrize("length", [200, 900])
def test_rc_average_is_strand_symmetric(length):
    """A sequence and its reverse complement get the same pooled vector and mirrored per-position
    vectors (position i of one = position L-1-i of the other), one-pass and windowed."""
    model = tiny_model()
    seq = random_seq(length, 5, ((20, 30),))
    kw = dict(window=256, overlap=32, rc_average=True)
    a, b = embed_sequences(model, [seq, rc(seq)], **kw)
    np.testing.assert_array_equal(a, b)
    pa, pb = embed_sequences(model, [seq, rc(seq)], pool="none", **kw)
    np.testing.assert_allclose(pa, pb[::-1], rtol=0, atol=1e-6)
    plain = embed_sequences(model, [seq, rc(seq)], window=256, overlap=32)
    assert not np.allclose(plain[0], plain[1], atol=1e-4)  # without averaging the strands differ


def test_batching_and_padding_do_not_change_results():
    model = tiny_model()
    seqs = [random_seq(n, i) for i, n in enumerate((5, 250, 31, 700, 64, 1))]
    one = embed_sequences(model, seqs, pool="none", batch_size=1, window=256)
    many = embed_sequences(model, seqs, pool="none", batch_size=8, max_batch_tokens=4096, window=256)
    for x, y in zip(one, many):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)


def test_deterministic_and_bf16_close():
    model = tiny_model()
    seqs = [random_seq(300, 1), random_seq(80, 2)]
    a = embed_sequences(model, seqs, window=256)
    b = embed_sequences(tiny_model(), seqs, window=256)
    np.testing.assert_array_equal(a, b)
    c = embed_sequences(model, seqs, window=256, precision="bf16")
    assert c.dtype == np.float32
    cos = (a * c).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(c, axis=1)
    assert cos.min() > 0.99


# ---------------------------------------------------------------------- files
def test_embed_fasta_npz_ids_order_and_layout(tmp_path, fasta, checkpoint):
    path, recs = fasta
    out = tmp_path / "emb.npz"
    s = embed_fasta(path, checkpoint, out, progress=False)
    d = load_embeddings(out)
    assert list(d["ids"]) == [r.id for r in read_records(path)] == [n for n, _ in recs]
    np.testing.assert_array_equal(d["lengths"], [len(x) for _, x in recs])
    assert d["embeddings"].shape == (len(recs), 16) and d["embeddings"].dtype == np.float32
    assert d["info"]["window"] == 256 and d["info"]["overlap"] == 32 and d["info"]["pool"] == "mean"
    allN = list(d["ids"]).index("allN")
    assert np.isnan(d["embeddings"][allN]).all() and d["pooled_bases"][allN] == 0 and s.empty_records == 1
    assert np.isfinite(np.delete(d["embeddings"], allN, 0)).all()
    # the same numbers as the in-memory API on the same sequences
    model = ReformerLM.from_pretrained(checkpoint)
    ref = embed_sequences(model, [x for _, x in recs])
    np.testing.assert_allclose(d["embeddings"], ref, atol=1e-6, equal_nan=True)
    with np.load(out, allow_pickle=False) as z:  # plain numpy, no pickle
        assert set(z.files) == {"ids", "lengths", "embeddings", "pooled_bases", "info"}


@pytest.mark.parametrize("pool", ["mean", "none"])
@pytest.mark.parametrize("rc_average", [False, True])
def test_h5_and_npz_agree(tmp_path, fasta, checkpoint, pool, rc_average):
    path, recs = fasta
    kw = dict(pool=pool, rc_average=rc_average, progress=False, window=128, overlap=24)
    embed_fasta(path, checkpoint, tmp_path / "e.npz", **kw)
    embed_fasta(path, checkpoint, tmp_path / "e.h5", **kw)
    a, b = load_embeddings(tmp_path / "e.npz"), load_embeddings(tmp_path / "e.h5")
    assert set(a) == set(b)
    for k in a:
        if k == "info":
            assert a[k] == b[k]
        else:
            np.testing.assert_array_equal(a[k], b[k])
    if pool == "none":
        total = sum(len(x) for _, x in recs)
        assert a["embeddings"].shape == (total, 16)
        np.testing.assert_array_equal(a["offsets"], np.concatenate([[0], np.cumsum([len(x) for _, x in recs])]))
        model = ReformerLM.from_pretrained(checkpoint)
        ref = embed_sequences(model, [x for _, x in recs], pool="none", window=128, overlap=24, rc_average=rc_average)
        for i, r in enumerate(ref):
            np.testing.assert_allclose(a["embeddings"][a["offsets"][i]:a["offsets"][i + 1]], r, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_output_format_from_suffix():
    assert output_format("x.npz") == "npz" and output_format("x.H5") == "h5" and output_format("x.bin", "h5") == "h5"
    with pytest.raises(SeqformerError, match="--format"):
        output_format("emb.out")


def test_atomic_write_leaves_no_file_on_failure(tmp_path, fasta, checkpoint, monkeypatch):
    """A failure mid-run leaves neither a final file nor temporaries; an existing output stays intact."""
    from reformer_seq.tasks.embedding import engine as embedding

    path, _ = fasta
    calls = {"n": 0}
    real_forward = embedding._Engine._forward

    def failing_forward(self, toks):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real_forward(self, toks)

    monkeypatch.setattr(embedding._Engine, "_forward", failing_forward)
    for name, pool in (("new.npz", "none"), ("new.h5", "none"), ("new2.npz", "mean")):
        calls["n"] = 0
        with pytest.raises(RuntimeError, match="simulated"):
            embed_fasta(path, checkpoint, tmp_path / name, pool=pool, window=128, overlap=16, batch_size=1,
                        progress=False)
        assert not (tmp_path / name).exists()
    old = tmp_path / "old.npz"
    old.write_bytes(b"previous contents")
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        embed_fasta(path, checkpoint, old, window=128, overlap=16, batch_size=1, progress=False)
    assert old.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.npz"]


# ---------------------------------------------------------------------- CLI
def test_cli_embed_success(tmp_path, fasta, checkpoint):
    path, recs = fasta
    out = tmp_path / "sub" / "emb.h5"
    r = invoke("embed", str(path), "--checkpoint", str(checkpoint), "--out", str(out), "--pool", "none",
               "--rc-average", "--window", "200", "--overlap", "50", "--batch-size", "2", "--device", "cpu",
               "--quiet")
    assert r.exit_code == 0, r.output
    assert "embedded 5 record(s)" in r.output and str(out) in r.output and len(r.output.strip().splitlines()) == 1
    d = load_embeddings(out)
    assert d["embeddings"].shape == (sum(len(x) for _, x in recs), 16)
    assert d["info"]["rc_average"] is True and d["info"]["window"] == 200 and d["info"]["overlap"] == 50


def test_cli_help_teaches():
    r = invoke("embed", "--help")
    assert r.exit_code == 0
    for text in ("Examples:", "--pool", "--rc-average", "--window", "--overlap", "--format", "seqformer embed"):
        assert text in r.output


def test_cli_bad_fasta(tmp_path, checkpoint):
    bad = tmp_path / "reads.fa"
    bad.write_text("@read1\nACGT\n+\nIIII\n")
    line = error_line(invoke("embed", str(bad), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "e.npz")))
    assert "FASTQ" in line and str(bad) in line
    missing = tmp_path / "nope.fa"
    assert "file not found" in error_line(invoke("embed", str(missing), "--checkpoint", str(checkpoint),
                                                 "--out", str(tmp_path / "e.npz")))
    good = tmp_path / "ok.fa"
    good.write_text(">x\nACGT\n")
    assert "--window" in error_line(invoke("embed", str(good), "--checkpoint", str(checkpoint), "--window", "999",
                                           "--out", str(tmp_path / "e.npz")))
    assert not (tmp_path / "e.npz").exists()


def test_library_errors_are_seqformer_errors(tmp_path, checkpoint):
    with pytest.raises(CheckpointError):
        embed_fasta(tmp_path / "x.fa", tmp_path / "no_such_run", tmp_path / "e.npz", progress=False)
    with pytest.raises(InputError):
        embed_sequences(tiny_model(), ["ACGT", ""])


# ---------------------------------------------------------------------- layers and max pooling
@pytest.mark.parametrize("rc_average", [False, True])
def test_embed_layer_and_max_pool_equal_per_position_output(tiny_run, rc_average):
    from reformer_seq.tasks.embedding import embed_sequences

    model, tok, _ = load_pretrained(tiny_run)
    rng = np.random.default_rng(3)
    seqs = ["".join(rng.choice(list("ACGTN"), n, p=[.24, .24, .24, .24, .04])) for n in (300, 57, 1000)]
    kw = dict(window=128, overlap=32, device="cpu")
    rc = [s[::-1].translate(str.maketrans("ACGTN", "TGCAN")) for s in seqs]
    for layer in (0, 1, 2):
        per_pos = embed_sequences(model, seqs, tok, pool="none", layer=layer, rc_average=rc_average, **kw)
        maxed = embed_sequences(model, seqs, tok, pool="max", layer=layer, rc_average=rc_average, **kw)
        meaned = embed_sequences(model, seqs, tok, pool="mean", layer=layer, rc_average=rc_average, **kw)
        fwd = embed_sequences(model, seqs, tok, pool="none", layer=layer, **kw)
        rev = embed_sequences(model, rc, tok, pool="none", layer=layer, **kw)
        for s, h, mx, mn, f, r in zip(seqs, per_pos, maxed, meaned, fwd, rev):
            keep = np.array([c != "N" for c in s])
            # max: over the bases of each strand (both strands with rc_average); mean: of the per-base output
            want = np.maximum(f[keep].max(0), r[keep[::-1]].max(0)) if rc_average else h[keep].max(0)
            np.testing.assert_allclose(mx, want, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(mn, h[keep].mean(0), rtol=1e-4, atol=1e-5)
    # one window: layer 1 is encode(layer=1), which differs from the final layer
    x = torch.from_numpy(tok.encode(seqs[1])).long()[None]
    with torch.no_grad():
        want = model.eval().encode(x, layer=1)[0].numpy()
    got = embed_sequences(model, [seqs[1]], tok, pool="none", layer=1, device="cpu")[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, embed_sequences(model, [seqs[1]], tok, pool="none", device="cpu")[0], atol=1e-3)


def test_cli_embed_layer_max(tmp_path, tiny_run):
    fa = tmp_path / "a.fa"
    fa.write_text("".join(f">r{i}\n{random_seq(60, i)}\n" for i in range(4)))
    res = invoke("embed", fa, "--checkpoint", tiny_run, "--out", tmp_path / "e.npz", "--layer", "1", "--pool", "max",
                 "--quiet")
    assert res.exit_code == 0, res.output
    z = np.load(tmp_path / "e.npz")
    assert z["embeddings"].shape == (4, 16) and json.loads(str(z["info"]))["layer"] == 1
    res = invoke("embed", str(fa), "--checkpoint", str(tiny_run), "--out", str(tmp_path / "f.npz"),
                 "--layer", "7")
    assert res.exit_code == 2 and "layer 7 does not exist" in res.output
