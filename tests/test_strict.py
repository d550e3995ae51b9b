"""Lenient reading says what it did (one InputWarning per file: count of characters outside IUPAC
per record and the first position), and ``--strict`` on every command that reads FASTA makes it
an error (one line, exit 2)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pipelines.cli import cli
from reformer_seq import ReformerConfig, ReformerLM
from reformer_seq.errors import InputError, InputWarning
from reformer_seq.genome.encoded import load_genome

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
# record 'chrB': 4 bad characters, the first ('$') at 1-based position 7; 'clean' has none;
# 'z': 1 bad character at position 3
CORRUPT = ">a ok\nACGTACGT\n>chrB x\nACGTAC$%\nQGTZ\n>clean\nACGTNRYacgt\n>z\nAC!\n"


@pytest.fixture()
def corrupt(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.fa"
    path.write_text(CORRUPT)
    return path


def _warnings(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if issubclass(w.category, InputWarning)]


@pytest.mark.parametrize("use_cache", [True, False])
def test_lenient_reading_warns_once_per_file_with_counts_and_positions(corrupt, tmp_path, use_cache):
    cache = tmp_path / "cache"
    msgs = _warnings(lambda: load_genome(corrupt, cache_dir=cache, use_cache=use_cache))
    assert len(msgs) == 1, msgs
    m = msgs[0]
    assert m.startswith(str(corrupt)) and "5 characters outside IUPAC" in m and "2 record(s)" in m, m
    assert "'chrB' 4 (first at position 7)" in m and "'z' 1 (first at position 3)" in m, m
    assert "'a'" not in m and "'clean'" not in m and "--strict" in m, m
    # read again from the cache: the same warning (the file did not get better)
    assert _warnings(lambda: load_genome(corrupt, cache_dir=cache, use_cache=use_cache)) == msgs
    # strict: the first bad character is an error naming the record and position
    with pytest.raises(InputError, match=r"record 'chrB' \(#2\): invalid character '\$' at position 7"):
        load_genome(corrupt, cache_dir=cache, strict=True, use_cache=use_cache)


def test_clean_file_gives_no_warning(tmp_path):
    path = tmp_path / "ok.fa"
    path.write_text(">a\nACGTRYKMSWBDHVN-.acgtu\n")
    assert _warnings(lambda: load_genome(path, cache_dir=tmp_path / "c")) == []


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = ReformerLM(ReformerConfig(vocab_size=9, dim=16, depth=1, heads=2, bucket_size=8, n_hashes=1,
                                      max_seq_len=256, attn_layers=["local"], local_window=16))
    return model.save_pretrained(tmp_path_factory.mktemp("ck") / "m")


def _one_error_line(res) -> str:
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("seqformer: error: ")]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    return lines[0]


@pytest.mark.parametrize("command", ["pretrain", "embed", "evaluate"])
def test_strict_flag_on_every_command(command, corrupt, checkpoint, tmp_path):
    args = {"pretrain": ["pretrain", str(corrupt), "--config", str(TINY), "--max-steps", "1"],
            "embed": ["embed", str(corrupt), "--checkpoint", str(checkpoint), "--device", "cpu"],
            "evaluate": ["evaluate", str(corrupt), "--checkpoint", str(checkpoint), "--device", "cpu"]}[command]
    out = ["--out", str(tmp_path / ("e.npz" if command == "embed" else "out"))]
    line = _one_error_line(CliRunner().invoke(cli, args + out + ["--strict", "--quiet"]))
    assert str(corrupt) in line and "record 'chrB'" in line and "position 7" in line, line
    if command == "embed":  # lenient: works, and says what it replaced
        with pytest.warns(InputWarning, match="'chrB' 4 \\(first at position 7\\)"):
            res = CliRunner().invoke(cli, args + out + ["--quiet"])
        assert res.exit_code == 0, res.output
