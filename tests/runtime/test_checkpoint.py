"""runtime/checkpoint.py: a saved checkpoint loads back bit-identical with the config and facts it
was written with; a failed write leaves the previous one; run folders resolve to their best or
latest complete checkpoint, past broken pointers and half-written folders; bad folders are
refused with an error that names the file and the fix. As the commands meet them: missing weights,
an empty run folder and an unknown format version are one-line errors naming the folder. The shipped
models (resolve by name) are in test_shipped_models.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import reformer_seq
from helpers import error_line, invoke, tiny_model
from reformer_seq.config import ReformerConfig
from reformer_seq.errors import CheckpointError
from reformer_seq.genome.tokenizers import NucleotideTokenizer, tokenizer_from_spec
from reformer_seq.model.lm import ReformerLM
from reformer_seq.runtime.checkpoint import (CONFIG_FILE, FORMAT_VERSION, MODEL_FILE, SHIPPED_MODELS, STATE_FILE,
                                             load_model_weights, read_checkpoint_config, resolve_checkpoint,
                                             save_checkpoint, shipped_model)

CFG = ReformerConfig(vocab_size=9, dim=16, depth=2, heads=2, bucket_size=8, n_hashes=2, max_seq_len=256,
                     attn_layers=["local", "lsh"], local_window=16, ff_mult=2)
TOK = NucleotideTokenizer()


def model(seed: int = 0) -> ReformerLM:
    torch.manual_seed(seed)
    return ReformerLM(CFG)


def save(folder: Path, seed: int = 0, **kw) -> Path:
    return save_checkpoint(model(seed), CFG, TOK.spec(), folder, **kw)


def test_round_trip_is_bit_identical(tmp_path):
    src = model(1)
    state = {"step": 7, "rng": torch.get_rng_state(), "optimizer": {"lr": 0.1}}
    folder = save_checkpoint(src, CFG, TOK.spec(), tmp_path / "ck", training_state=state, meta={"step": 7, "x": "y"})
    assert folder == tmp_path / "ck" and sorted(p.name for p in folder.iterdir()) == sorted(
        [MODEL_FILE, CONFIG_FILE, STATE_FILE])
    dst = model(2)
    assert not all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    load_model_weights(dst, folder)
    for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), name
    info = read_checkpoint_config(folder)
    assert info["format_version"] == FORMAT_VERSION and info["seqformer_version"] == reformer_seq.__version__
    assert ReformerConfig.from_dict(info["model"]) == CFG
    assert tokenizer_from_spec(info["tokenizer"]).spec() == TOK.spec()
    assert (info["step"], info["x"]) == (7, "y")
    saved = torch.load(folder / STATE_FILE, weights_only=True)  # loads without running code
    assert saved["step"] == 7 and torch.equal(saved["rng"], state["rng"])


def test_rewrite_replaces_and_a_failed_write_keeps_the_old_one(tmp_path):
    folder = save(tmp_path / "ck", seed=1, meta={"tag": "first"})
    save(folder, seed=2, meta={"tag": "second"})
    assert read_checkpoint_config(folder)["tag"] == "second"
    m = model(3)
    load_model_weights(m, folder)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), model(2).state_dict().values()))

    class Broken(torch.nn.Module):
        def state_dict(self, *a, **k):  # fails halfway through the write
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        save_checkpoint(Broken(), CFG, TOK.spec(), folder, meta={"tag": "third"})
    assert read_checkpoint_config(folder)["tag"] == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary folder left behind


def point(run: Path, name: str, step_folder: str) -> None:
    (run / name).write_text(json.dumps({"step": 0, "path": f"checkpoints/{step_folder}"}))


def test_resolve_a_run_folder(tmp_path):
    run = tmp_path / "run"
    for step in (10, 20, 30):
        save(run / "checkpoints" / f"step-{step:07d}", meta={"step": step})
    ck = run / "checkpoints"
    assert resolve_checkpoint(ck / "step-0000020") == ck / "step-0000020"  # a checkpoint folder is itself
    assert resolve_checkpoint(run) == ck / "step-0000030"  # no pointers: the newest complete one
    point(run, "best.json", "step-0000010")
    point(run, "latest.json", "step-0000020")
    assert resolve_checkpoint(run) == ck / "step-0000010"
    assert resolve_checkpoint(run, prefer="latest") == ck / "step-0000020"
    assert resolve_checkpoint(str(run)) == ck / "step-0000010"  # a str works too
    # a pointer to a folder that is gone, or half written, falls back to the other pointer
    (ck / "step-0000010" / MODEL_FILE).unlink()
    assert resolve_checkpoint(run) == ck / "step-0000020"
    (run / "latest.json").write_text("{not json")
    assert resolve_checkpoint(run, prefer="latest") == ck / "step-0000030"  # then the newest complete folder
    (ck / "step-0000040").mkdir()  # an empty (killed) folder is skipped
    assert resolve_checkpoint(run, prefer="latest") == ck / "step-0000030"


def test_resolve_errors_say_what_to_pass(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope: no such checkpoint or run folder; pass the --out folder "
                                              r"of `seqformer pretrain`.*\(ecoli, human\)"):
        resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: holds no checkpoint .*`seqformer pretrain --out"):
        resolve_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="'mouse' is not a shipped model; shipped: ecoli, human"):
        shipped_model("mouse")


def test_shipped_models_resolve_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    for name in SHIPPED_MODELS:
        folder = resolve_checkpoint(name)
        assert folder == shipped_model(name) and read_checkpoint_config(folder)["model"]
    (tmp_path / "ecoli").mkdir()  # a folder of that name wins over the shipped model
    with pytest.raises(CheckpointError, match="ecoli: holds no checkpoint"):
        resolve_checkpoint("ecoli")


@pytest.mark.parametrize("damage,expect", [
    ("no_config", f"missing {CONFIG_FILE}; a checkpoint folder needs {MODEL_FILE} and {CONFIG_FILE}"),
    ("no_weights", f"missing {MODEL_FILE}"),
    ("bad_json", f"{CONFIG_FILE}: not valid JSON"),
    ("future_version", "checkpoint format 99, this seqformer reads format 1; retrain it or use the seqformer "
                       "version that wrote it (9.9.9)"),
    ("no_tokenizer", "has no 'tokenizer' section; the file is incomplete"),
])
def test_bad_config_is_refused(tmp_path, damage, expect):
    folder = save(tmp_path / "ck")
    cfg = folder / CONFIG_FILE
    info = json.loads(cfg.read_text())
    if damage == "no_config":
        cfg.unlink()
    elif damage == "no_weights":
        (folder / MODEL_FILE).unlink()
    elif damage == "bad_json":
        cfg.write_text(cfg.read_text()[:40])
    elif damage == "future_version":
        cfg.write_text(json.dumps({**info, "format_version": 99, "seqformer_version": "9.9.9"}))
    else:
        del info["tokenizer"]
        cfg.write_text(json.dumps(info))
    with pytest.raises(CheckpointError) as e:
        read_checkpoint_config(folder)
    assert expect in str(e.value) and str(folder) in str(e.value)


def test_bad_weights_are_refused(tmp_path):
    folder = save(tmp_path / "ck")
    other = ReformerLM(ReformerConfig(**{**CFG.to_dict(), "depth": 3, "attn_layers": ["local", "lsh"]}))
    with pytest.raises(CheckpointError, match=r"weights do not match the model in config.json \(missing "
                                              r"\['layers.2.*made by an incompatible version"):
        load_model_weights(other, folder)
    data = (folder / MODEL_FILE).read_bytes()
    (folder / MODEL_FILE).write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: cannot read weights .*corrupt or truncated"):
        load_model_weights(model(), folder)


# ---------------------------------------------------------------------- through the commands
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    tiny_model(0, max_seq_len=256, attn_layers=["local", "lsh"], local_window=16).save_pretrained(folder)
    return folder


def test_cli_checkpoint_missing_files(tmp_path, checkpoint):
    """A folder without weights, a run folder without checkpoints and a checkpoint of an unknown
    format are each one error line that names the folder and what is wrong."""
    path = tmp_path / "g.fa"
    path.write_text(">g\n" + "ACGTTGCA" * 40 + "\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((checkpoint / "config.json").read_text())  # no model.safetensors
    line = error_line(invoke("embed", str(path), "--checkpoint", str(broken), "--out", str(tmp_path / "e.npz")))
    assert "model.safetensors" in line and str(broken) in line
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert "holds no checkpoint" in error_line(invoke("embed", str(path), "--checkpoint", str(empty),
                                                      "--out", str(tmp_path / "e.npz")))
    old = tmp_path / "old_version"
    old.mkdir()
    (old / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg["format_version"] = 99
    (old / "config.json").write_text(json.dumps(cfg))
    assert "format 99" in error_line(invoke("embed", str(path), "--checkpoint", str(old),
                                            "--out", str(tmp_path / "e.npz")))
    assert not (tmp_path / "e.npz").exists()
