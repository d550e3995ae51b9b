"""Plain helpers shared by the test files: the repository's paths, one way to run the CLI (in
process and as a subprocess), one builder of small models, the tiny run config, the dense
attention oracle. The fixtures built from them (tiny_run, ...) are in conftest.py.

Every test folder imports this as ``helpers``: ``[tool.pytest.ini_options] pythonpath`` in
pyproject.toml puts tests/ on sys.path. Test files import nothing from each other."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
CONFIGS = REPO / "configs"
TINY = CONFIGS / "tiny.yaml"  # the model and schedule small enough for tests
PHIX = DATA / "phiX174_NC_001422.1.fa"  # 5,386 bases: the genome the tiny runs train on
ECOLI = DATA / "Ecoli_K12_MG1655.fasta.gz"
SHARED = REPO.parent / "shared" / "data" / "genomes"  # optional: the full set, when present
FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN_TOLERANCE = 1e-5  # nats per base; float32 rounding differences between compilers/threads stay far below


# ---------------------------------------------------------------------- the CLI
def invoke(*args, catch_exceptions: bool = False, **kw):
    """``seqformer ARGS...`` in this process (click's CliRunner); each argument goes through str().

    An exception the CLI does not turn into an exit code propagates (catch_exceptions=False), so a
    test sees the traceback instead of a bare exit code 1."""
    from click.testing import CliRunner

    from pipelines.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=catch_exceptions, **kw)


def spawn(*args, merge_stderr: bool = True, text: bool = True, env: dict | None = None,
          **kw) -> subprocess.Popen:
    """``python -m pipelines.cli ARGS...`` as a child process of the repository (for signals and
    kills), one thread, unbuffered; stderr joins stdout unless merge_stderr=False."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *[str(a) for a in args]], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                            text=text, **kw)


def error_line(res, alone: bool = True) -> str:
    """The one ``seqformer: error: ...`` line of a result that exited 2. alone=True: the output is
    that line and nothing else; alone=False: other lines (warnings, progress) may come with it."""
    lines = [ln for ln in res.output.strip().splitlines() if ln]
    errors = [ln for ln in lines if ln.startswith("seqformer: error: ")]
    assert res.exit_code == 2 and len(errors) == 1, res.output
    if alone:
        assert len(lines) == 1, res.output
    return errors[0]


# ---------------------------------------------------------------------- small models
def model_config(**overrides):
    """A small ReformerConfig: 9 tokens (the nucleotide tokenizer), width 16, 2 layers of 2 heads,
    LSH buckets of 8 and 2 hash rounds; keyword arguments override or add fields."""
    from reformer_seq.config import ReformerConfig

    return ReformerConfig(**{**dict(vocab_size=9, dim=16, depth=2, heads=2, bucket_size=8, n_hashes=2), **overrides})


def tiny_model(seed: int = 0, **overrides):
    """ReformerLM(model_config(**overrides)), initialised from torch.manual_seed(seed)."""
    import torch

    from reformer_seq.model.lm import ReformerLM

    torch.manual_seed(seed)
    return ReformerLM(model_config(**overrides))


def sharp_model(causal: bool = True, seed: int = 0):
    """The tiny config (local + LSH layers) with large random weights: confident, context-dependent predictions."""
    import torch

    from reformer_seq.config import load_run_config
    from reformer_seq.model.lm import ReformerLM

    cfg = load_run_config(TINY).model
    cfg.causal = causal
    torch.manual_seed(seed)
    model = ReformerLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


def save_causal_checkpoint(model, folder: Path, fasta: Path, seq_len: int) -> Path:
    """``model`` saved as a causal checkpoint that says it was trained on ``fasta`` in windows of
    ``seq_len`` (what evaluate/score read for their baselines and default window)."""
    return model.save_pretrained(folder, meta={
        "objective": "causal", "step": 0,
        "train_data": {"paths": [str(fasta)], "val_fraction": 0.1, "alphabet": "nucleotide", "seq_len": seq_len}})


def golden_maker():
    """tests/fixtures/make_golden.py as a module (it builds the golden checkpoint and inputs)."""
    spec = importlib.util.spec_from_file_location("make_golden", FIXTURES / "make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------- tiny pretraining runs
def tiny_config(tmp_path: Path, **train) -> Path:
    """configs/tiny.yaml with ``train`` fields replaced, written to tmp_path/cfg.yaml."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg["train"].update(train)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def metrics(run: Path, kind: str = "train") -> dict[int, float]:
    """step -> bits per base of a run folder's metrics.jsonl rows of one kind (train or val)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["bits_per_base"] for r in rows if r["kind"] == kind}


def train_ranks(tmp_path: Path, n: int, device: str) -> Path:
    """A ``torchrun --nproc_per_node n`` run of 10 steps under --max-time (so the ranks agree on
    the step horizon and on stopping), with checkpoints (every rank's RNG state is gathered)
    and validation; checks what every multi-process run must give and returns the run folder."""
    import torch

    from reformer_seq.runtime.checkpoint import resolve_checkpoint
    from reformer_seq.tasks.pretrained import load_pretrained

    cfg = tiny_config(tmp_path, max_steps=10, save_every=5, eval_every=5)  # the horizon is fitted at step 10
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "-m", "pipelines.cli", "pretrain", str(PHIX), "--config", str(cfg), "--out", str(run), "--quiet",
           "--device", device, "--max-time", "600"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads((run / "run.json").read_text())["world_size"] == n
    assert res.stdout.count("10 steps in") == 1  # only rank 0 reports and writes
    model, _, info = load_pretrained(run)
    assert info["step"] == 10
    state = torch.load(resolve_checkpoint(run) / "training_state.pt", weights_only=False)
    assert len(state["rng"]["torch"]) == n  # every rank's RNG state, gathered through the device
    assert len(metrics(run)) >= 1 and len(metrics(run, "val")) >= 2
    return run


# ---------------------------------------------------------------------- the attention oracle
def reference_attention(q, k, v, visible, self_only_if_alone=True):
    """Dense attention. q, k, v: (G, L, D) float64; visible: (G, L, L) bool (diagonal ignored
    when ``self_only_if_alone``: self is visible exactly when nothing else is)."""
    import math

    import torch

    G, L, D = q.shape
    eye = torch.eye(L, dtype=torch.bool)
    if self_only_if_alone:
        others = visible & ~eye
        alone = ~others.any(-1, keepdim=True)  # (G, L, 1)
        visible = others | (alone & eye)
    logits = torch.einsum("gid,gjd->gij", q, k) / math.sqrt(D)
    logits = logits.masked_fill(~visible, float("-inf"))
    return torch.einsum("gij,gjd->gid", torch.softmax(logits, -1), v)


def rand_qkv(G, L, D, seed=0, clustered=False):
    """Random shared query/keys (raw and unit-normalised) and values, each (G, L, D); clustered:
    around 4 directions, so hash buckets hold several positions and rounds collide."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(G, L, D, generator=g)
    if clustered:
        centers = torch.randn(G, 4, D, generator=g)
        qk = centers[:, torch.randint(0, 4, (L,), generator=g)] * 3 + qk * 0.3
    v = torch.randn(G, L, D, generator=g)
    return qk, F.normalize(qk, dim=-1), v


def oracle_visibility(buckets, causal, C):
    """From buckets (R, G, L) and the definitions alone: who sees whom in the union of LSH rounds
    (sorted by (bucket, position), chunks of C), as a (G, L, L) bool tensor."""
    import numpy as np
    import torch

    R, G, L = buckets.shape
    vis = np.zeros((G, L, L), dtype=bool)
    for r in range(R):
        for g in range(G):
            b = buckets[r, g]
            order = sorted(range(L), key=lambda p: (b[p], p))  # sort by (bucket, position)
            s = {p: i for i, p in enumerate(order)}
            for i in range(L):
                for j in range(L):
                    if b[i] != b[j]:
                        continue
                    if causal:  # j among the C nearest earlier same-bucket positions of i
                        if j <= i and s[i] - s[j] <= C:
                            vis[g, i, j] = True
                    elif s[i] // C - s[j] // C in (0, 1):  # own chunk or the previous one
                        vis[g, i, j] = True
    return torch.from_numpy(vis)
