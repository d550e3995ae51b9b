"""config.py: the YAML loader (every shipped config loads and round-trips; unknown keys and
sections rejected naming the key and the nearest valid one; type errors naming the key; nested
sections and command-line overrides merged; unreadable files named), and the checks of
``__post_init__`` that say the fix."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from reformer_seq.config import (DataConfig, ReformerConfig, RunConfig, TrainConfig, factor_axial, from_dict,
                                 load_run_config)
from reformer_seq.errors import ConfigError

from helpers import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def write(tmp_path: Path, data, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_as_written_and_round_trip(path, tmp_path):
    """Every key of the file lands in its field; the rest are the dataclass defaults; to_dict
    written back as YAML loads to an equal config."""
    raw = yaml.safe_load(path.read_text()) or {}
    cfg = load_run_config(path)
    for section, cls in (("model", ReformerConfig), ("data", DataConfig), ("train", TrainConfig)):
        given = raw.get(section) or {}
        for f in dataclasses.fields(cls):
            got = getattr(getattr(cfg, section), f.name)
            if f.name in given:
                want = given[f.name]
                assert (list(got) if isinstance(got, tuple) else got) == want, f"{section}.{f.name}"
            elif f.name != "vocab_size":
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                assert got == (tuple(default) if isinstance(got, tuple) else default), f"{section}.{f.name}"
    again = load_run_config(write(tmp_path, cfg.to_dict()))
    assert again == cfg


def test_an_empty_file_is_the_defaults(tmp_path):
    assert load_run_config(write(tmp_path, "")) == RunConfig()
    assert load_run_config(write(tmp_path, "model:\ntrain:\n")) == RunConfig()


@pytest.mark.parametrize("data,expect", [
    ({"model": {"dimm": 64}}, "unknown key 'dimm' in model; did you mean 'dim'?"),
    ({"data": {"seq_lenn": 64}}, "unknown key 'seq_lenn' in data; did you mean 'seq_len'?"),
    ({"train": {"max_stepz": 5}}, "unknown key 'max_stepz' in train; did you mean 'max_steps'?"),
    ({"trian": {"lr": 0.1}}, "unknown key 'trian' in {path}; did you mean 'train'?"),
    ({"model": {"zzzzzz": 1}}, "unknown key 'zzzzzz' in model; valid keys: vocab_size, dim, depth"),
])
def test_unknown_keys_are_rejected_naming_the_key(tmp_path, data, expect):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_run_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and expect.format(path=path) in msg


@pytest.mark.parametrize("section,key,value,expect", [
    ("model", "dim", "64", "model.dim must be int, got '64' (str)"),
    ("model", "dim", 64.0, "model.dim must be int, got 64.0 (float)"),
    ("model", "dim", True, "model.dim must be int, got True (bool)"),
    ("model", "causal", "yes", "model.causal must be bool, got 'yes' (str)"),
    ("model", "attn_layers", ["local", 3], "model.attn_layers[1] must be str, got 3 (int)"),
    ("model", "attn_layers", "local", "model.attn_layers must be a list, got 'local'"),
    ("model", "axial_shape", [32, 16, 2], "model.axial_shape must have 2 values, got [32, 16, 2]"),
    ("data", "stride", "half", "data.stride must be int, got 'half' (str)"),
    ("train", "betas", [0.9], "train.betas must have 2 values, got [0.9]"),
    ("train", "lr", "fast", "train.lr must be float, got 'fast' (str)"),
])
def test_type_errors_name_the_key(tmp_path, section, key, value, expect):
    path = write(tmp_path, {section: {key: value}})
    with pytest.raises(ConfigError, match=None) as e:
        load_run_config(path)
    assert str(e.value) == f"{path}: {expect}"


def test_types_that_convert(tmp_path):
    cfg = load_run_config(write(tmp_path, {"model": {"axial_shape": [32, 2048], "attn_layers": ["local", "lsh"],
                                                     "max_seq_len": 65536},
                                           "data": {"stride": None}, "train": {"lr": 1, "betas": [0.9, 1]}}))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # an int where a float goes
    assert cfg.train.betas == (0.9, 1.0) and isinstance(cfg.train.betas, tuple)
    assert cfg.model.axial_shape == (32, 2048) and cfg.model.attn_layers == ["local", "lsh"]
    assert cfg.data.stride is None  # Optional takes null


@pytest.mark.parametrize("text,expect", [
    ("model: 5\n", "model must be a mapping of keys to values, got int"),
    ("- model\n- train\n", "expected sections model:, data:, train:, got list"),
    ("model: {dim: 64\n", "not valid YAML"),
])
def test_malformed_files(tmp_path, text, expect):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_run_config(path)
    assert str(e.value).startswith(f"{path}: ") and expect in str(e.value)
    with pytest.raises(ConfigError, match="missing.yaml: config file not found; see configs/"):
        load_run_config(tmp_path / "missing.yaml")


def test_overrides_merge_into_the_sections(tmp_path):
    """Overrides (the command line's options) replace single keys of a section; None leaves the
    file's value; a section missing from the file is created; the same checks apply."""
    path = write(tmp_path, {"model": {"dim": 32, "heads": 2}, "train": {"lr": 0.01, "max_steps": 50}})
    cfg = load_run_config(path, {"train": {"lr": 0.5, "max_steps": None}, "data": {"seq_len": 128},
                                 "model": {}})
    assert (cfg.train.lr, cfg.train.max_steps, cfg.data.seq_len) == (0.5, 50, 128)
    assert (cfg.model.dim, cfg.model.heads) == (32, 2)
    with pytest.raises(ConfigError, match="unknown key 'lrr' in train; did you mean 'lr'"):
        load_run_config(path, {"train": {"lrr": 0.5}})
    with pytest.raises(ConfigError, match="train.max_steps must be int"):
        load_run_config(path, {"train": {"max_steps": "many"}})


def test_from_dict_names_where():
    with pytest.raises(ConfigError, match="unknown key 'x' in ckpt/config.json model"):
        from_dict(ReformerConfig, {"x": 1}, "ckpt/config.json model")
    with pytest.raises(ConfigError, match="unknown key 'x' in model;"):
        RunConfig.from_dict({"model": {"x": 1}}, where="sec")  # a section names itself (the loader adds the file)
    with pytest.raises(ConfigError, match="unknown key 'x' in sec;"):
        RunConfig.from_dict({"x": {}}, where="sec")
    assert ReformerConfig.from_dict(ReformerConfig(dim=32, heads=2).to_dict()) == ReformerConfig(dim=32, heads=2)


@pytest.mark.parametrize("n", [1, 2, 12, 97, 1024, 4096, 65536, 1_000_000, 1 << 20])
def test_factor_axial_is_the_most_square_factorisation(n):
    a, b = factor_axial(n)
    best = max(d for d in range(1, int(n ** 0.5) + 1) if n % d == 0)  # brute force
    assert (a, b) == (best, n // best)


@pytest.mark.parametrize("kwargs,expect", [
    ({"dim": 30, "heads": 4}, "model.dim (30) is not divisible by model.heads (4); use heads in [1, 2, 3, 5, 6, 10, "
                              "15, 30] or set dim_head"),
    ({"max_seq_len": 4096, "axial_shape": (32, 64)}, "axial_shape (32, 64) covers 2,048 positions but max_seq_len "
                                                     "is 4,096; use (64, 64)"),
    ({"n_buckets": 12}, "model.n_buckets must be a power of two or null (auto), got 12"),
    ({"attn_layers": ["local", "sparse"]}, "attention kind 'sparse' is not one of lsh, full, local"),
    ({"dropout": 1.0}, "model.dropout must be in [0, 1), got 1.0"),
])
def test_model_checks_say_the_fix(kwargs, expect):
    with pytest.raises(ConfigError) as e:
        ReformerConfig(**kwargs)
    assert expect in str(e.value)


@pytest.mark.parametrize("cls,kwargs,expect", [
    (DataConfig, {"alphabet": "protein"}, "data.alphabet must be 'nucleotide' or 'byte', got 'protein'"),
    (DataConfig, {"val_fraction": 1.5}, "data.val_fraction must be in [0, 1], got 1.5"),
    (TrainConfig, {"objective": "mlm"}, "train.objective must be 'causal' or 'masked', got 'mlm'"),
    (TrainConfig, {"precision": "fp8"}, "train.precision must be fp32, bf16 or fp16, got 'fp8'"),
    (TrainConfig, {"eval_every": 0}, "train.eval_every must be >= 1, got 0"),
])
def test_data_and_train_checks(cls, kwargs, expect):
    with pytest.raises(ConfigError) as e:
        cls(**kwargs)
    assert expect in str(e.value)
