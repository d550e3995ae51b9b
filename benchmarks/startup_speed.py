"""Start-up time of the ``seqformer`` command: ``--help``, ``--version`` and ``pretrain --help``, each
run N times in a fresh interpreter (median wall time), and whether torch was imported.

    python benchmarks/startup_speed.py                        # this tree
    python benchmarks/startup_speed.py --compare /tmp/old     # and another checkout, runs alternating

``--compare`` takes the root of another checkout (e.g. ``git worktree add /tmp/old COMMIT``); the
two trees' runs alternate so they meet the same load. Prints a Markdown table and writes
``benchmarks/results/startup_speed.json``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from reformer_seq.runtime.files import atomic_write_json  # noqa: E402

COMMANDS = [["--help"], ["--version"], ["pretrain", "--help"]]
# the CLI in a fresh interpreter; reports on stderr whether torch got imported
PROBE = ("import sys; sys.argv = ['seqformer'] + sys.argv[1:]\nfrom pipelines.cli import main\ntry:\n    main()\n"
         "except SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)")


def _once(root: Path, args: list[str]) -> tuple[float, bool]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=root, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, res.stderr.strip().splitlines()[-1] == "True"


def _commit(root: Path) -> str:
    res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    return res.stdout.strip() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per command and tree")
    ap.add_argument("--compare", type=Path, help="root of another checkout to time beside this one")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup_speed.json")
    a = ap.parse_args()
    trees = {"this": ROOT, **({"compare": a.compare.resolve()} if a.compare else {})}
    rows = []
    for args in COMMANDS:
        times: dict[str, list[float]] = {k: [] for k in trees}
        torch: dict[str, bool] = {}
        for _ in range(a.runs):
            for name, root in trees.items():
                t, torch[name] = _once(root, args)
                times[name].append(t)
        rows.append({"command": "seqformer " + " ".join(args),
                     **{f"{k}_median_s": statistics.median(v) for k, v in times.items()},
                     **{f"{k}_runs_s": v for k, v in times.items()},
                     **{f"{k}_imports_torch": v for k, v in torch.items()}})
    head = "| command | " + " | ".join(f"{k} ({_commit(r)})" for k, r in trees.items()) + " |"
    print(head + "\n|" + "---|" * (len(trees) + 1))
    for r in rows:
        cells = [f"{r[f'{k}_median_s']:.2f} s{' (torch)' if r[f'{k}_imports_torch'] else ''}" for k in trees]
        print(f"| `{r['command']}` | " + " | ".join(cells) + " |")
    atomic_write_json(a.out, {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average": os.getloadavg(),
                              "commits": {k: _commit(r) for k, r in trees.items()}, "runs": a.runs, "rows": rows})


if __name__ == "__main__":
    main()
