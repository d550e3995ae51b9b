"""Lenient reading says what it did (one InputWarning per file: count of characters outside IUPAC
per record and the first position), and ``--strict`` on every command that reads FASTA makes it
an error (one line, exit 2)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from helpers import TINY, error_line, invoke, tiny_model
from reformer_seq.errors import InputError, InputWarning
from reformer_seq.genome.encoded import load_genome

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
    assert "'a'" not in m and "'clean'" not in m and "strict=True" in m, m
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
    model = tiny_model(0, depth=1, n_hashes=1, max_seq_len=256, attn_layers=["local"], local_window=16)
    return model.save_pretrained(tmp_path_factory.mktemp("ck") / "m")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, checkpoint) -> Path:
    root = tmp_path_factory.mktemp("ft")
    fa = root / "clean.fa"
    fa.write_text("".join(f">r{i}\n{'ACGTTGCA' * (i + 4)}\n" for i in range(8)))
    res = invoke("finetune", "--class", f"a={fa}", "--class", f"b={fa}", "--checkpoint",
                 str(checkpoint), "--out", str(root / "run"), "--max-steps", "1", "--batch-size",
                 "4", "--device", "cpu", "--quiet")
    assert res.exit_code == 0, res.output
    return root / "run"


COMMANDS = ["pretrain", "embed", "evaluate", "score", "score-variants", "finetune", "predict"]


def _strict_args(command: str, corrupt: Path, checkpoint: Path, finetuned: Path, tmp_path: Path) -> list[str]:
    vcf = tmp_path / "v.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\nchrB\t2\t.\tC\tA\t.\t.\t.\n")
    ck = ["--checkpoint", str(checkpoint), "--device", "cpu"]
    return {"pretrain": ["pretrain", str(corrupt), "--config", str(TINY), "--max-steps", "1", "--out", str(tmp_path / "o")],
            "embed": ["embed", str(corrupt), *ck, "--out", str(tmp_path / "e.npz")],
            "evaluate": ["evaluate", str(corrupt), *ck, "--out", str(tmp_path / "o")],
            "score": ["score", str(corrupt), *ck, "--out", str(tmp_path / "s.npz")],
            "score-variants": ["score-variants", str(vcf), "--reference", str(corrupt), *ck, "--out",
                               str(tmp_path / "v.tsv")],
            "finetune": ["finetune", "--class", f"a={corrupt}", "--class", f"b={corrupt}", *ck, "--out",
                         str(tmp_path / "ft")],
            "predict": ["predict", str(corrupt), "--checkpoint", str(finetuned), "--device", "cpu", "--out",
                        str(tmp_path / "p.tsv")]}[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_strict_flag_on_every_command(command, corrupt, checkpoint, finetuned, tmp_path):
    args = _strict_args(command, corrupt, checkpoint, finetuned, tmp_path)
    line = error_line(invoke(*args, "--strict", "--quiet"), alone=False)
    assert str(corrupt) in line and "record 'chrB'" in line and "position 7" in line, line
    assert "--strict" in line and "strict=False" not in line, line  # the command line's words
    if command == "embed":  # lenient: works, and says what it replaced, in one line
        res = invoke(*args, "--quiet")
        assert res.exit_code == 0, res.output
        warn = [ln for ln in res.output.splitlines() if "warning" in ln.lower() or "IUPAC" in ln]
        assert len(warn) == 1 and warn[0].startswith("seqformer: warning: "), res.output
        assert "'chrB' 4 (first at position 7)" in warn[0] and "--strict" in warn[0], warn
        assert "InputWarning" not in res.output and ".py:" not in res.output, res.output


def test_library_errors_speak_in_arguments(corrupt, tmp_path):
    with pytest.raises(InputError) as e:
        load_genome(corrupt, cache_dir=tmp_path, strict=True)
    assert "strict=False" in str(e.value) and "--strict" not in str(e.value)
    assert "--strict" in e.value.for_cli()


def test_vcf_parse_errors_name_the_line_and_field(tmp_path, checkpoint):
    head = "##fileformat=VCFv4.2\n##contig=<ID=g>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    ref = tmp_path / "g.fa"
    ref.write_text(">g\nACGTACGTACGTACGTACGT\n")
    for body, expect in [("g\t5\ta\tA\tC\t.\tPASS\t.\ng\tx12\tb\tA\tC\t.\tPASS\t.\n", "line 5, field POS: 'x12'"),
                         ("g\t5\ta\tA\tC\t.\tPASS\t.\ng\t7\tb\tA\n", "line 5: 4 tab-separated fields")]:
        vcf = tmp_path / "bad.vcf"
        vcf.write_text(head + body)
        line = error_line(invoke("score-variants", str(vcf), "--reference", str(ref),
                                 "--checkpoint", str(checkpoint), "--device", "cpu",
                                 "--out", str(tmp_path / "o.tsv"), "--quiet"), alone=False)
        assert str(vcf) in line and expect in line, line


def test_predict_says_it_does_not_window_long_records(tmp_path, finetuned):
    assert "does not window" in invoke("predict", "--help").output
    fa = tmp_path / "long.fa"
    fa.write_text(">long\n" + "ACGT" * 100 + "\n")  # 400 bases; the model takes 256
    line = error_line(invoke("predict", str(fa), "--checkpoint", str(finetuned), "--device",
                             "cpu", "--out", str(tmp_path / "p.tsv"), "--quiet"), alone=False)
    assert "long (400 bases)" in line and "seqkit sliding -W 256" in line, line
    assert not (tmp_path / "p.tsv").exists()
