"""`seqformer finetune` / `predict`: a planted motif the head must learn, a frozen backbone that
stays bit-identical, exact resume, predictions in file order, clear errors. (Embeddings by layer
are in test_embedding.py, encode(layer=) in tests/model/test_lm.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import invoke
from reformer_seq.tasks.pretrained import load_pretrained
from reformer_seq.tasks.finetune.model import SequenceModel, load_finetuned
from reformer_seq.tasks.finetune.train import FinetuneOptions, finetune
from reformer_seq.tasks.finetune.metrics import auroc, bootstrap_se

MOTIF = "GATTACAG"


@pytest.fixture(scope="module")
def backbone(tiny_run) -> Path:
    """The pretrained backbone: conftest's tiny run (20 steps of configs/tiny.yaml on phiX174)."""
    return tiny_run


def planted(n: int, length: int = 60, copies: int = 3, seed: int = 0) -> tuple[list[str], list[int]]:
    """Random sequences; the odd ones carry ``copies`` planted copies of MOTIF."""
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for i in range(n):
        s = rng.choice(list("ACGT"), length)
        if i % 2:
            for _ in range(copies):
                p = rng.integers(0, length - len(MOTIF))
                s[p:p + len(MOTIF)] = list(MOTIF)
        seqs.append("".join(s))
        labels.append(i % 2)
    return seqs, labels


def write_tsv(path: Path, seqs, labels) -> Path:
    path.write_text("sequence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in zip(seqs, labels)))
    return path


def write_fasta(path: Path, seqs, prefix: str = "r") -> Path:
    path.write_text("".join(f">{prefix}{i}\n{s}\n" for i, s in enumerate(seqs)))
    return path


def test_metrics_auroc_oracle():
    y = np.array([0, 0, 1, 1])
    assert auroc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auroc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auroc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5  # ties count half
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = rng.normal(size=400) + y
    # equals the pairwise definition
    pairs = (s[y == 1][:, None] > s[y == 0][None, :]).mean()
    assert auroc(y, s) == pytest.approx(pairs)
    assert 0.01 < bootstrap_se(y, s) < 0.05


@pytest.mark.slow
def test_planted_motif_is_learned_and_predicted_in_file_order(tmp_path, backbone):
    seqs, labels = planted(1000)
    tsv = write_tsv(tmp_path / "train.tsv", seqs, labels)
    out = tmp_path / "ft"
    res = invoke("finetune", tsv, "--checkpoint", backbone, "--out", out, "--lr", "0.01", "--backbone-lr-scale", "1",
                 "--max-steps", "600", "--eval-every", "100", "--quiet")
    assert res.exit_code == 0, res.output
    for name in ("metrics.jsonl", "curve.png", "best.json", "finetune.json", "result.json"):
        assert (out / name).is_file(), name
    # fresh held-out sequences, scored through `predict`
    test_seqs, test_labels = planted(200, seed=1)
    fasta = write_fasta(tmp_path / "test.fa", test_seqs)
    res = invoke("predict", fasta, "--checkpoint", out, "--out", tmp_path / "preds.tsv", "--quiet")
    assert res.exit_code == 0, res.output
    rows = [line.split("\t") for line in (tmp_path / "preds.tsv").read_text().splitlines()]
    assert rows[0] == ["id", "length", "predicted", "p_0", "p_1"]
    assert [r[0] for r in rows[1:]] == [f"r{i}" for i in range(200)]  # file order
    p1 = np.array([float(r[4]) for r in rows[1:]])
    assert auroc(np.array(test_labels), p1) > 0.9
    # the same numbers from the library, record by record
    model = SequenceModel.from_pretrained(out)
    from reformer_seq.tasks.finetune.model import predict_tokens
    from reformer_seq.genome.tokenizers import NucleotideTokenizer

    tok = NucleotideTokenizer()
    single = predict_tokens(model, [tok.encode(test_seqs[7])], tok.pad_id)
    assert single[0, 1] == pytest.approx(p1[7], rel=1e-4)


@pytest.mark.slow
def test_frozen_backbone_stays_bit_identical(tmp_path, backbone):
    seqs, labels = planted(200)
    tsv = write_tsv(tmp_path / "t.tsv", seqs, labels)
    before, _, _ = load_pretrained(backbone)
    r = finetune({"tsv": str(tsv)}, backbone, tmp_path / "ft", FinetuneOptions(freeze="all", max_steps=30,
                                                                                 eval_every=10), progress=False)
    after, _, _ = load_finetuned(r.run_dir)
    for (name, a), (_, b) in zip(before.state_dict().items(), after.backbone.state_dict().items()):
        assert torch.equal(a, b), name
    lm, _, _ = load_pretrained(r.run_dir)  # a fine-tuned run serves as a language model too (embed)
    assert type(lm).__name__ == "ReformerLM" and lm.state_dict().keys() == before.state_dict().keys()
    head0 = SequenceModel(before, after.head_config).head.out[-1].weight
    assert not torch.equal(head0, after.head.out[-1].weight)  # the head did train
    # --head-steps: the backbone waits that many steps, then trains
    for steps, same in ((6, True), (8, False)):
        r = finetune({"tsv": str(tsv)}, backbone, tmp_path / f"h{steps}",
                     FinetuneOptions(head_steps=6, max_steps=steps, eval_every=100), progress=False)
        bb = load_finetuned(r.run_dir)[0].backbone
        assert all(torch.equal(a, b) for a, b in zip(bb.parameters(), before.parameters())) == same
    # --freeze 1 trains the top block only
    r = finetune({"tsv": str(tsv)}, backbone, tmp_path / "ft1", FinetuneOptions(freeze=1, max_steps=5, eval_every=5),
                 progress=False)
    top = load_finetuned(r.run_dir)[0].backbone
    assert all(torch.equal(a, b) for a, b in zip(top.layers[0].parameters(), before.layers[0].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(top.layers[1].parameters(), before.layers[1].parameters()))


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path, backbone):
    seqs, labels = planted(160)
    tsv = write_tsv(tmp_path / "t.tsv", seqs, labels)
    opts = dict(max_steps=16, eval_every=5, patience=100, pool="attention", hidden=8, dropout=0.2)
    finetune({"tsv": str(tsv)}, backbone, tmp_path / "full", FinetuneOptions(**opts), progress=False)
    finetune({"tsv": str(tsv)}, backbone, tmp_path / "part", FinetuneOptions(**{**opts, "max_steps": 8}),
             progress=False)
    finetune({}, None, tmp_path / "part", FinetuneOptions(**opts), resume=True, progress=False, echo=lambda s: None)

    def last(run):
        return load_finetuned(run / json.loads((run / "latest.json").read_text())["path"])[0].state_dict()

    a, b = last(tmp_path / "full"), last(tmp_path / "part")
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def losses(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]

    assert losses(tmp_path / "full") == losses(tmp_path / "part")


def test_class_fastas_and_regression(tmp_path, backbone):
    seqs, labels = planted(60)
    pos = write_fasta(tmp_path / "pos.fa", [s for s, y in zip(seqs, labels) if y], "p")
    neg = write_fasta(tmp_path / "neg.fa", [s for s, y in zip(seqs, labels) if not y], "n")
    res = invoke("finetune", "--class", f"motif={pos}", "--class", f"plain={neg}", "--checkpoint", backbone,
                 "--out", tmp_path / "c", "--max-steps", "4", "--quiet")
    assert res.exit_code == 0, res.output
    assert load_finetuned(tmp_path / "c")[0].head_config.classes == ["motif", "plain"]
    # regression on GC content, TSV with record ids from a FASTA
    gc = [f"{(s.count('G') + s.count('C')) / len(s):.4f}" for s in seqs]
    fa = write_fasta(tmp_path / "all.fa", seqs)
    (tmp_path / "ids.tsv").write_text("id\tlabel\n" + "".join(f"r{i}\t{g}\n" for i, g in enumerate(gc)))
    res = invoke("finetune", tmp_path / "ids.tsv", "--fasta", fa, "--checkpoint", backbone, "--out", tmp_path / "r",
                 "--max-steps", "4", "--quiet")
    assert res.exit_code == 0, res.output
    assert "pearson" in res.output
    res = invoke("predict", fa, "--checkpoint", tmp_path / "r", "--out", tmp_path / "v.tsv", "--quiet")
    rows = (tmp_path / "v.tsv").read_text().splitlines()
    assert rows[0] == "id\tlength\tvalue" and len(rows) == 61


@pytest.mark.parametrize("case,expect", [
    ("one_class", "only one class"),
    ("regress_text", "not a number"),
    ("too_long", "longer than the model's max_seq_len"),
    ("unknown_id", "not in"),
    ("no_label_column", "needs a 'label' column"),
    ("bad_freeze", "--freeze"),
])
def test_clear_errors(tmp_path, backbone, case, expect):
    seqs, labels = planted(20)
    args = ["--checkpoint", backbone, "--out", tmp_path / "o", "--max-steps", "2", "--quiet"]
    if case == "one_class":
        tsv = write_tsv(tmp_path / "t.tsv", seqs, [1] * 20)
    elif case == "regress_text":
        tsv = write_tsv(tmp_path / "t.tsv", seqs, ["high", "low"] * 10)
        args += ["--task", "regress"]
    elif case == "too_long":
        tsv = write_tsv(tmp_path / "t.tsv", seqs[:-1] + ["A" * 2000], labels)
    elif case == "unknown_id":
        fa = write_fasta(tmp_path / "a.fa", seqs)
        tsv = tmp_path / "t.tsv"
        tsv.write_text("id\tlabel\nr1\t0\nnope\t1\n")
        args += ["--fasta", fa]
    elif case == "no_label_column":
        tsv = tmp_path / "t.tsv"
        tsv.write_text("sequence\tclass\nACGT\t0\n")
    else:
        tsv = write_tsv(tmp_path / "t.tsv", seqs, labels)
        args += ["--freeze", "top"]
    res = invoke("finetune", tsv, *args)
    assert res.exit_code == 2, res.output
    assert expect in res.output and "Traceback" not in res.output
    assert res.output.count("\n") == 1


def test_predict_rejects_a_pretrained_checkpoint(tmp_path, backbone):
    fa = write_fasta(tmp_path / "a.fa", ["ACGT"])
    res = invoke("predict", str(fa), "--checkpoint", str(backbone), "--out", str(tmp_path / "p.tsv"))
    assert res.exit_code == 2 and "not a fine-tuned one" in res.output
