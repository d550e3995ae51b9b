"""Sequence inputs at scale (reformer_seq/genome/inputs.py): directories and @LIST files expand to
the files they name, in a stable order, with clear errors; pretrain reads a few thousand files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import TINY, invoke
from reformer_seq.errors import InputError
from reformer_seq.genome.inputs import expand_sequence_inputs


def write_genomes(folder: Path, n: int, length: int = 300, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"g{i:05d}.fa"
        p.write_text(f">g{i}\n" + "".join(rng.choice(list("ACGT"), length)) + "\n")
        paths.append(p)
    return paths


def test_directories_and_lists_expand_in_a_stable_order(tmp_path):
    a = write_genomes(tmp_path / "a", 3)
    b = write_genomes(tmp_path / "a" / "sub", 2, seed=1)
    (tmp_path / "a" / "notes.txt").write_text("not a genome")
    lst = tmp_path / "list.txt"
    lst.write_text(f"# my genomes\n{a[1].relative_to(tmp_path)}\n\n{b[0]}  # absolute\na/sub\n")
    assert expand_sequence_inputs([tmp_path / "a"]) == sorted(a + b)
    assert expand_sequence_inputs([f"@{lst}"]) == [a[1], b[0], *sorted(b)]
    assert expand_sequence_inputs([a[0], f"@{lst}"])[0] == a[0]


@pytest.mark.parametrize("bad,match", [("missing.fa", "file not found"), ("@nolist.txt", "no such list file"),
                                       ("empty_dir", "no sequence files"), ("@empty.txt", "names no files"),
                                       ("@broken.txt", "line 2: gone.fa")])
def test_bad_inputs_name_the_problem(tmp_path, monkeypatch, bad, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty.txt").write_text("# nothing\n")
    write_genomes(tmp_path, 1)
    (tmp_path / "broken.txt").write_text("g00000.fa\ngone.fa\n")
    with pytest.raises(InputError, match=match):
        expand_sequence_inputs([bad])


@pytest.mark.slow
def test_pretrain_reads_thousands_of_files_from_a_directory_and_a_list(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    files = write_genomes(tmp_path / "bins", 1500)
    lst = tmp_path / "more.txt"
    extra = write_genomes(tmp_path / "extra", 500, seed=2)
    cfg = yaml.safe_load(TINY.read_text())
    cfg["train"]["val_bases"] = 128 * 16  # validate on a sample of 16 windows, not one per file
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(cfg))
    lst.write_text("\n".join(str(p) for p in extra) + "\n")
    run = tmp_path / "run"
    res = invoke("pretrain", str(tmp_path / "bins"), "--fasta-list", str(lst), "--config", str(tiny),
                 "--seq-len", "128", "--max-steps", "2", "--out", str(run), "--quiet")
    assert res.exit_code == 0, res.output
    assert "read 2,000 files: 2,000 records, 600,000 bases" in res.output
    assert [Path(p).name for p in json.loads((run / "run.json").read_text())["fasta"]] == \
        [p.name for p in files + extra]


def test_embed_evaluate_and_score_take_directories_and_lists(tmp_path, tiny_run):
    files = write_genomes(tmp_path / "bins", 3, length=500)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(str(p) for p in files[1:]) + "\n")
    res = invoke("embed", tmp_path / "bins", "--checkpoint", tiny_run, "--out", tmp_path / "e.npz", "--quiet")
    assert res.exit_code == 0, res.output
    assert list(np.load(tmp_path / "e.npz")["ids"]) == ["g0", "g1", "g2"]
    res = invoke("score", f"@{lst}", "--checkpoint", tiny_run, "--out", tmp_path / "t.npz", "--quiet")
    assert res.exit_code == 0, res.output
    assert sorted(np.load(tmp_path / "t.npz").files) == ["g1", "g2"]
    res = invoke("evaluate", files[0], f"@{lst}", "--checkpoint", tiny_run, "--no-gene-hmm",
                 "--out", tmp_path / "rep", "--quiet")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["n_bases"] == 3 * 500 - 3


def test_repeated_record_ids_across_files_are_an_error(tmp_path, tiny_run):
    a = write_genomes(tmp_path / "a", 1)
    b = write_genomes(tmp_path / "b", 1)  # the same id, g0, in another file
    res = invoke("embed", str(a[0]), str(b[0]), "--checkpoint", str(tiny_run), "--out",
                 str(tmp_path / "e.npz"))
    assert res.exit_code == 2 and "also in" in res.output and not (tmp_path / "e.npz").exists()
