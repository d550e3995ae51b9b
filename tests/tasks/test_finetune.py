"""`seqformer finetune` / `predict`: a planted motif the head must learn, a frozen backbone that
stays bit-identical, exact resume, predictions in file order, clear errors. (Embeddings by layer
are in test_embedding.py, encode(layer=) in tests/model/test_lm.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import invoke, spawn
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
    for name in ("metrics.jsonl", "loss_curve.png", "best.json", "finetune.json", "result.json"):
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


def test_signal_resume_equals_uninterrupted(tmp_path, backbone):
    """Stopped by SIGINT mid-epoch (step 7 of 4 batches per epoch, between validations) and resumed,
    a fine-tune's training losses, validations and final weights equal an uninterrupted run's of
    the same 16 steps (dropout on: the RNG state is restored too); the stop adds one validation and
    checkpoint at step 7."""
    import os
    import signal

    seqs, labels = planted(160)
    tsv = write_tsv(tmp_path / "t.tsv", seqs, labels)
    opts = dict(max_steps=16, eval_every=5, patience=100, hidden=8, dropout=0.2)
    quiet = dict(progress=False, echo=lambda s: None)
    full = finetune({"tsv": str(tsv)}, backbone, tmp_path / "full", FinetuneOptions(**opts), **quiet)

    def interrupt(step, loss):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)  # handled: finish the step, validate, checkpoint, stop

    first = finetune({"tsv": str(tsv)}, backbone, tmp_path / "part", FinetuneOptions(**opts), on_step=interrupt,
                     **quiet)
    assert (first.stopped_by, first.step, first.signal) == ("signal", 7, signal.SIGINT)
    assert json.loads((tmp_path / "part" / "latest.json").read_text())["step"] == 7
    second = finetune({}, None, tmp_path / "part", FinetuneOptions(**opts), resume=True, **quiet)
    assert (second.step, second.best_value, second.best_step) == (16, full.best_value, full.best_step)

    def rows(run, kind):
        return {r["step"]: {k: v for k, v in r.items() if k not in ("time", "seconds", "tokens_per_s")}
                for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind}

    a, b = rows(tmp_path / "full", "train"), rows(tmp_path / "part", "train")
    assert sorted(a) == sorted(b) == [1, 10] and a == b  # rows every 10 steps and at step 1
    va, vb = rows(tmp_path / "full", "val"), rows(tmp_path / "part", "val")
    assert sorted(vb) == [5, 7, 10, 15, 16] and all(va[s] == vb[s] for s in va)
    wa = load_finetuned(tmp_path / "full" / "checkpoints" / "step-0000016")[0].state_dict()
    wb = load_finetuned(tmp_path / "part" / "checkpoints" / "step-0000016")[0].state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_sigterm_exits_128_plus_signal_and_resumes(tmp_path, backbone):
    """`seqformer finetune` stopped by SIGTERM checkpoints, says how to resume and exits 128 + 15,
    as `seqformer pretrain` does; the run then resumes."""
    import signal
    import time

    seqs, labels = planted(64)
    tsv = write_tsv(tmp_path / "t.tsv", seqs, labels)
    run = tmp_path / "run"
    proc = spawn("finetune", tsv, "--checkpoint", backbone, "--out", run, "--max-steps", 100000,
                 "--eval-every", 100000, "--quiet")
    t0 = time.time()
    while not (run / "metrics.jsonl").is_file() and time.time() - t0 < 120:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "stopped by signal 15" in out and f"seqformer finetune --out {run} --resume" in out
    step = json.loads((run / "latest.json").read_text())["step"]
    assert step >= 1 and json.loads((run / "result.json").read_text())["signal"] == signal.SIGTERM
    res = invoke("finetune", "--out", run, "--resume", "--max-steps", str(step + 2), "--quiet")
    assert res.exit_code == 0, res.output
    assert f"resuming {run} from step {step:,}" in res.output
    assert json.loads((run / "latest.json").read_text())["step"] == step + 2


def test_early_stop_follows_the_validation_record(tmp_path, backbone):
    """--patience: the run stops at the first validation that is the patience-th in a row not to
    beat the best (AUROC: higher is better), and best.json names the best one; recomputed here
    from the validation rows of metrics.jsonl."""
    seqs, labels = planted(120)
    tsv = write_tsv(tmp_path / "t.tsv", seqs, labels)
    res = finetune({"tsv": str(tsv)}, backbone, tmp_path / "ft", FinetuneOptions(lr=1e-4, max_steps=200,
                                                                                  eval_every=5, patience=2),
                   progress=False)
    vals = [(r["step"], r["auroc"]) for r in map(json.loads, (tmp_path / "ft" / "metrics.jsonl").read_text()
                                                 .splitlines()) if r["kind"] == "val"]
    best, best_step, bad, stop = None, None, 0, None
    for step, v in vals:
        if best is None or v > best:
            best, best_step, bad = v, step, 0
        else:
            bad += 1
        if bad >= 2:
            stop = step
            break
    assert stop is not None and stop < 200 and stop == vals[-1][0]  # it did stop early, at its last validation
    assert (res.stopped_by, res.step, res.best_step, res.best_value) == ("early_stop", stop, best_step, best)
    assert json.loads((tmp_path / "ft" / "best.json").read_text())["step"] == best_step


def test_frozen_backbone_stays_in_eval_mode_after_validations(tmp_path, backbone, monkeypatch):
    """--freeze all: the backbone runs in eval mode at every step, also after a validation (whose
    predict pass puts the model back in training mode); the head trains in training mode."""
    from reformer_seq.tasks.finetune import train as T

    seen = []
    loss = T.FinetuneTask.loss

    def spy(self, idx):
        seen.append((self.model.backbone.training, self.model.head.training))
        return loss(self, idx)

    monkeypatch.setattr(T.FinetuneTask, "loss", spy)
    seqs, labels = planted(100)
    tsv = write_tsv(tmp_path / "t.tsv", seqs, labels)
    finetune({"tsv": str(tsv)}, backbone, tmp_path / "ft", FinetuneOptions(freeze="all", max_steps=9, eval_every=3),
             progress=False)
    assert seen == [(False, True)] * 9
    seen.clear()
    finetune({"tsv": str(tsv)}, backbone, tmp_path / "ft2", FinetuneOptions(max_steps=4, eval_every=2),
             progress=False)
    assert seen == [(True, True)] * 4


@pytest.mark.slow
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
