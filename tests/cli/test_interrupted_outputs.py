"""A command killed with SIGKILL part-way leaves nothing at its output path: score, embed and
score-variants write to a temporary file beside the output and rename it when complete."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from helpers import ECOLI, spawn


def big_fasta(path: Path, copies: int = 3) -> Path:
    """E. coli three times over (14 Mb): more than a few seconds of work for any command."""
    import gzip

    with gzip.open(ECOLI, "rt") as f:
        body = "".join(line for line in f if not line.startswith(">"))
    path.write_text("".join(f">copy{i}\n{body}" for i in range(copies)))
    return path


def snv_vcf(path: Path, n: int = 4000) -> Path:
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=K-12-MG1655>", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    import gzip

    with gzip.open(ECOLI, "rt") as f:
        seq = "".join(line.strip() for line in f if not line.startswith(">"))[:2 * n + 10]
    for i in range(n):
        pos = 1 + 2 * i
        ref = seq[pos - 1].upper()
        lines.append(f"K-12-MG1655\t{pos}\t.\t{ref}\t{'C' if ref != 'C' else 'G'}\t.\t.\t.")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("command", ["score", "embed", "score-variants"])
def test_sigkill_part_way_leaves_no_output(tmp_path, tiny_run, command):
    out = tmp_path / {"score": "track.bedgraph", "embed": "emb.npz", "score-variants": "scored.tsv"}[command]
    big = str(big_fasta(tmp_path / "big.fa")) if command != "score-variants" else ""
    args = {"score": ["score", big, "--checkpoint", str(tiny_run), "--out", str(out)],
            "embed": ["embed", big, "--checkpoint", str(tiny_run), "--pool", "none", "--out", str(out)],
            "score-variants": ["score-variants", str(snv_vcf(tmp_path / "v.vcf")), "--reference", str(ECOLI),
                               "--checkpoint", str(tiny_run), "--out", str(out)]}[command]
    p = spawn(*args, "--quiet")
    time.sleep(6)
    assert p.poll() is None, f"{command} finished before it could be killed: {p.stdout.read()}"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert not out.exists(), f"{command} left {out} behind after SIGKILL"
    assert not any(f.name == out.name for f in tmp_path.iterdir())
    assert p.returncode == -signal.SIGKILL
