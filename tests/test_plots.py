"""The library draws its PNGs (loss curve, motif profiles) with matplotlib's object API
(``matplotlib.figure.Figure``): no ``matplotlib.use`` and no pyplot, so a notebook user's
backend is left alone."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_DRAW = r"""
import json, sys
from pathlib import Path
import matplotlib
matplotlib.use("svg")   # the user's choice: must survive the library's plots
out = Path(sys.argv[1])
from reformer_seq.tasks.training.run_folder import plot_loss_curve
from reformer_seq.tasks.evaluation.report import plot_profile
rows = [{"kind": "train", "step": s, "bits_per_base": 2.0 - s / 100} for s in range(1, 30)]
rows += [{"kind": "val", "step": 10, "bits_per_base": 1.95}, {"kind": "val", "step": 20, "bits_per_base": 1.9}]
(out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
rows = [{"kind": "train", "step": s, "loss": 0.7 - s / 100} for s in range(1, 30)]  # a fine-tune: two axes
rows += [{"kind": "val", "step": 10, "auroc": 0.6}, {"kind": "val", "step": 20, "auroc": 0.7}]
(out / "ft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
plot_loss_curve(out / "ft.jsonl", out / "ft_curve.png", "loss", "auroc")
result = {"id": "MA0139.2", "name": "CTCF", "n_evaluated": 12, "consensus": "CCAC", "control_accuracy": 0.3,
          "per_position": {"information_content": [0.5, 1.9, 1.2, 0.1], "site_accuracy": [0.4, 0.9, 0.7, 0.3]}}
plot_profile(result, out / "profile.png")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


@pytest.mark.slow
def test_plots_leave_the_backend_alone(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _DRAW, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["svg", "False"], res.stdout  # backend unchanged, pyplot never imported
    for name in ("loss_curve.png", "ft_curve.png", "profile.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not list(tmp_path.glob(".*")), "a temporary file was left behind"


def test_no_backend_switch_or_pyplot_in_library_code():
    hits = []
    for path in sorted((ROOT / "reformer_seq").rglob("*.py")):
        rel = path.relative_to(ROOT / "reformer_seq").as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"matplotlib\.use\(|matplotlib\.pyplot|plt\.switch_backend", line):
                hits.append(f"reformer_seq/{rel}:{n}: {line.strip()}")
    assert not hits, "library code switches matplotlib's backend or uses pyplot:\n" + "\n".join(hits)
