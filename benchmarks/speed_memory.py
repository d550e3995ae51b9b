#!/usr/bin/env python
"""Speed and memory of one training step, seqformer against its peers, from 4K to 1M tokens.

For each model and each sequence length L this runs one forward+backward step (batch 1, random
tokens, loss = cross-entropy of the logits) in a *fresh* child process: one warm-up step, then
``--repeats`` timed steps, of which the median is kept. Every child prints JSON lines on stdout;
the parent watches it (time-out, resident-memory cap) and records what happened, failures
included: ``out of memory`` (raised, or the child killed at the memory cap), ``timeout``, ``not installed``,
``skipped (failed at smaller L)``, ``error: ...``.

Models (all: width 64, 2 layers, 4 heads of width 16, feed-forward 256 with GELU, vocabulary 16,
causal, no dropout, batch 1; the LSH ones with bucket / chunk length 16, 4 hash rounds, one
chunk of look-back, reversible layers and axial position embeddings factoring L):

* ``seqformer``: ``reformer_seq.ReformerLM`` (this project).
* ``hf``: Hugging Face ``transformers.ReformerModelWithLMHead`` (transformers 4.x; v5 removed it).
* ``reformer_pytorch``: ``reformer_pytorch.ReformerLM`` (lucidrains, 1.4.4).
* ``sdpa``: exact causal attention, a plain pre-norm transformer written here around
  ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``.

Peak memory: on CPU the peak resident set size of the child (``ru_maxrss``; it includes the
Python interpreter, torch and the model library), on CUDA ``torch.cuda.max_memory_allocated``.

Outputs (``--out-dir``, default ``benchmarks/results``): ``speed_memory_<device>.json`` (all
records, written after every run), ``.md`` (table) and ``.png`` (log-log time and memory).

Examples::

    python benchmarks/speed_memory.py                                  # everything, CPU
    python benchmarks/speed_memory.py --models hf,sdpa --lengths 4K,16K --repeats 3
    python benchmarks/speed_memory.py --device cuda --mem-cap-gb 4     # what fits in 4 GiB
    python benchmarks/speed_memory.py --models seqformer --merge       # re-measure one model
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

MODELS = ("seqformer", "seqformer_copy", "hf", "reformer_pytorch", "sdpa")
DEFAULT_LENGTHS = (4096, 16384, 65536, 262144, 1048576)
LABELS = {
    "seqformer": "seqformer",
    "seqformer_copy": "seqformer + copy attention",
    "hf": "HF ReformerModel",
    "reformer_pytorch": "reformer-pytorch",
    "sdpa": "exact SDPA",
}

# The shared small config (issue 7).
VOCAB, DIM, DEPTH, HEADS, HEAD_DIM, FF_MULT = 16, 64, 2, 4, 16, 4
THP_MIN_ELEMS = 1 << 24  # L * dim from which children run with THP_MEM_ALLOC_ENABLE=1 (256K tokens): measured
# faster there (seqformer 256K +3%, 1M +17%), slower below (64K -10%)
BUCKET, N_HASHES = 16, 4
FF_CHUNK = 16384  # positions per feed-forward chunk (seqformer's default ff_chunk_size)

GIB = 1024 ** 3
# Statuses after which larger lengths of the same model are not tried.
_FATAL_PREFIXES = ("out of memory", "timeout")


# ====================================================================== helpers
def parse_length(s: str) -> int:
    s = s.strip().upper().replace("_", "").replace(",", "")
    mult = 1
    if s.endswith("K"):
        mult, s = 1024, s[:-1]
    elif s.endswith("M"):
        mult, s = 1024 * 1024, s[:-1]
    return int(float(s) * mult)


def fmt_length(n: int) -> str:
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


def fmt_bytes(b) -> str:
    if b is None:
        return "-"
    if b >= GIB:
        return f"{b / GIB:.2f} GiB"
    return f"{b / 1024 ** 2:.0f} MiB"


def next_pow2(n: int) -> int:
    return 1 << (int(n) - 1).bit_length()


def factor_axial(n: int) -> tuple[int, int]:
    """Most square ``(a, b)`` with ``a * b == n`` (the same rule as seqformer's config)."""
    a = int(math.isqrt(n))
    while a > 1 and n % a:
        a -= 1
    return a, n // a


def _rss_bytes(pid: int):
    """Current resident set size of ``pid`` in bytes (Linux /proc, else psutil, else None)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # optional: pip install -e .[bench]

        return psutil.Process(pid).memory_info().rss
    except Exception:
        return None


# ====================================================================== the models (child side)
def build_seqformer(L: int, **copy):
    from reformer_seq import ReformerConfig, ReformerLM, set_process_tuning

    set_process_tuning(True)  # buffer cache and heap thresholds, as the seqformer commands have them

    cfg = ReformerConfig(vocab_size=VOCAB, dim=DIM, depth=DEPTH, heads=HEADS, bucket_size=BUCKET,
                         n_hashes=N_HASHES, causal=True, max_seq_len=next_pow2(L), reversible=True,
                         attention="lsh", dropout=0.0, **copy)
    model = ReformerLM(cfg)
    info = {"config": cfg.to_dict() if hasattr(cfg, "to_dict") else repr(cfg)}
    return model, (lambda x: model(x)), info


def build_hf(L: int):
    import transformers
    from transformers import ReformerConfig as HFConfig
    from transformers import ReformerModelWithLMHead

    try:  # keep the log quiet about unused generation defaults
        transformers.logging.set_verbosity_error()
    except Exception:
        pass
    axial = list(factor_axial(L))
    cfg = HFConfig(
        vocab_size=VOCAB, hidden_size=DIM, num_attention_heads=HEADS, attention_head_size=HEAD_DIM,
        attn_layers=["lsh"] * DEPTH, feed_forward_size=FF_MULT * DIM, hidden_act="gelu",
        lsh_attn_chunk_length=BUCKET, lsh_num_chunks_before=1, lsh_num_chunks_after=0,
        num_hashes=N_HASHES, num_buckets=None,  # None: HF's own rule, ~2L/chunk, factorised when large
        is_decoder=True, max_position_embeddings=L, axial_pos_embds=True, axial_pos_shape=axial,
        axial_pos_embds_dim=[DIM // 2, DIM // 2], hidden_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0,
        chunk_size_feed_forward=min(FF_CHUNK, L), chunk_size_lm_head=0, use_cache=False,
        pad_token_id=0, eos_token_id=2, tie_word_embeddings=False,
    )
    model = ReformerModelWithLMHead(cfg)
    info = {"transformers": transformers.__version__,
            "config": {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}}
    return model, (lambda x: model(input_ids=x, use_cache=False).logits), info


def build_reformer_pytorch(L: int):
    from importlib.metadata import version

    from reformer_pytorch import ReformerLM as RPLM

    kw = dict(num_tokens=VOCAB, dim=DIM, depth=DEPTH, max_seq_len=L, heads=HEADS, dim_head=HEAD_DIM,
              bucket_size=BUCKET, n_hashes=N_HASHES, causal=True, ff_mult=FF_MULT,
              ff_chunks=max(1, math.ceil(L / FF_CHUNK)), attn_chunks=1, lsh_dropout=0.0, ff_dropout=0.0,
              post_attn_dropout=0.0, layer_dropout=0.0, reverse_thres=0, full_attn_thres=0,
              axial_position_emb=True, axial_position_shape=factor_axial(L))
    model = RPLM(**kw)
    info = {"reformer_pytorch": version("reformer-pytorch"),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}}
    return model, (lambda x: model(x)), info


def build_sdpa(L: int):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
            self.qkv = nn.Linear(DIM, 3 * HEADS * HEAD_DIM)
            self.proj = nn.Linear(HEADS * HEAD_DIM, DIM)
            self.ff = nn.Sequential(nn.Linear(DIM, FF_MULT * DIM), nn.GELU(), nn.Linear(FF_MULT * DIM, DIM))

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(b, n, HEADS * HEAD_DIM))
            return x + self.ff(self.ln2(x))

    class ExactLM(nn.Module):
        """Plain pre-norm causal transformer: the exact-attention reference point."""

        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, DIM)
            a, b = factor_axial(L)
            self.ax = nn.ParameterList([nn.Parameter(torch.randn(a, 1, DIM) * 0.02),
                                        nn.Parameter(torch.randn(1, b, DIM) * 0.02)])
            self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
            self.norm = nn.LayerNorm(DIM)
            self.out = nn.Linear(DIM, VOCAB)

        def forward(self, x):
            n = x.shape[1]
            pos = (self.ax[0] + self.ax[1]).reshape(-1, DIM)[:n]
            h = self.emb(x) + pos
            for blk in self.blocks:
                h = blk(h)
            return self.out(self.norm(h))

    model = ExactLM()
    info = {"config": {"dim": DIM, "depth": DEPTH, "heads": HEADS, "head_dim": HEAD_DIM,
                       "ff": FF_MULT * DIM, "attention": "F.scaled_dot_product_attention(is_causal=True)",
                       "reversible": False}}
    return model, (lambda x: model(x)), info


def build_seqformer_copy(L: int):
    """seqformer with the copy attention of configs/default.yaml (12-mer codes, 2 hash rounds,
    fixed temperature 11, the mixture)."""
    return build_seqformer(L, copy_k=12, copy_hashes=2, copy_temperature=11.0, copy_learn_temperature=False)


BUILDERS = {"seqformer": build_seqformer, "seqformer_copy": build_seqformer_copy, "hf": build_hf,
            "reformer_pytorch": build_reformer_pytorch, "sdpa": build_sdpa}


# ====================================================================== child process
def _emit(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _max_rss_bytes() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)  # Linux reports KiB, macOS bytes


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    msg = str(exc).lower()
    return any(s in msg for s in ("out of memory", "can't allocate memory", "cannot allocate memory",
                                  "not enough memory", "bad_alloc", "std::bad_alloc"))


def child_main(args) -> int:
    t_start = time.perf_counter()
    deadline = t_start + args.budget if args.budget else None
    rec = {"event": "result", "model": args.model, "L": args.length, "device": args.device}
    try:
        import torch
    except ImportError as e:
        _emit({**rec, "status": f"error: torch not importable ({e})"})
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            _emit({**rec, "status": "error: CUDA not available"})
            return 0
        if dev.index is None:  # set_per_process_memory_fraction needs an index: "cuda" is the current device
            dev = torch.device("cuda", torch.cuda.current_device())
        if args.mem_cap_gb:
            total = torch.cuda.get_device_properties(dev).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.mem_cap_gb * GIB / total), dev)

    try:
        model, fwd, info = BUILDERS[args.model](args.length)
    except ImportError as e:
        _emit({**rec, "status": "not installed", "detail": f"{type(e).__name__}: {e}"})
        return 0
    except Exception as e:  # a peer that rejects the config, etc.
        _emit({**rec, "status": f"error: {type(e).__name__}: {str(e)[:300]}"})
        return 0

    model = model.to(dev).train()
    rec["n_params"] = sum(p.numel() for p in model.parameters())
    rec["info"] = info
    rec["torch"] = torch.__version__
    rec["threads"] = torch.get_num_threads()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (1, args.length), generator=g).to(dev)
    targets = torch.randint(0, VOCAB, (1, args.length), generator=g).to(dev)
    rec["rss_after_build_bytes"] = _rss_bytes(os.getpid())
    import gc  # as seqformer's training loop does, for every model: long-lived objects out of the GC's way

    gc.collect()
    gc.freeze()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step() -> float:
        for p in model.parameters():
            p.grad = None
        sync()
        t0 = time.perf_counter()
        logits = fwd(tokens)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 targets.reshape(-1))
        loss.backward()
        sync()
        dt = time.perf_counter() - t0
        del logits, loss
        return dt

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times: list[float] = []
    try:
        warm = step()
        _emit({"event": "warmup", "seconds": warm})
        rec["warmup_s"] = warm
        n = args.repeats
        if deadline is not None:
            left = deadline - time.perf_counter()
            n = min(n, int(left // (warm * 1.1)))
        if n < 1:
            rec["status"] = f"timeout (warm-up step took {warm:.0f} s, no time left for a timed step)"
        else:
            if n < args.repeats:
                rec["repeats_reduced_to"] = n
            for i in range(n):
                times.append(step())
                _emit({"event": "step", "i": i, "seconds": times[-1]})
            rec["status"] = "ok"
    except Exception as e:  # RuntimeError (allocator), torch.cuda.OutOfMemoryError, MemoryError
        rec["status"] = "out of memory" if _is_oom(e) else f"error: {type(e).__name__}: {str(e)[:300]}"
        rec["detail"] = str(e)[:500]

    rec["step_times_s"] = times
    if times:
        med = statistics.median(times)
        rec["s_per_step"] = med
        rec["tok_per_s"] = args.length / med
    rec["peak_rss_bytes"] = _max_rss_bytes()
    if dev.type == "cuda":
        rec["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(dev))
        rec["mem_kind"] = "torch.cuda.max_memory_allocated"
    else:
        rec["peak_mem_bytes"] = rec["peak_rss_bytes"]
        rec["mem_kind"] = "peak RSS (ru_maxrss)"
    _emit(rec)
    return 0


# ====================================================================== parent side
def run_one(model: str, L: int, args) -> dict:
    """Run one (model, L) in a fresh interpreter; never raises."""
    cmd = [args.python or sys.executable, os.path.abspath(__file__), "--child", "--model", model,
           "--length", str(L), "--device", args.device, "--repeats", str(args.repeats),
           "--budget", str(args.timeout)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.device.startswith("cuda"):  # always: the child's own default is a 20 GiB cap, 0 means none
        cmd += ["--mem-cap-gb", str(args.mem_cap_gb)]
    host_cap = (args.mem_cap_gb if not args.device.startswith("cuda") else args.host_mem_cap_gb)
    host_cap_b = int(host_cap * GIB) if host_cap else None

    def limit_as():  # optional hard backstop on the child's address space
        if args.rlimit_as_gb:
            import resource

            lim = int(args.rlimit_as_gb * GIB)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")

    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # Long inputs (L * dim >= 2**24): big tensors on transparent huge pages, for every model
    # alike, as docs/performance.md recommends for such runs. Buffers over 32 MB are fresh mappings whatever
    # the heap settings (and from 512K tokens the library returns freed buffers to the OS), and
    # 2 MB pages cut the faults of re-allocating them ~50x. Short inputs run without: PyTorch's
    # 2 MB alignment then defeats glibc's buffer reuse.
    if not args.no_thp and L * DIM >= THP_MIN_ELEMS:
        env["THP_MEM_ALLOC_ENABLE"] = "1"

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=limit_as if args.rlimit_as_gb else None)
    lines: list[dict] = []
    err_chunks: list[str] = []

    def read_out():
        for line in proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                lines.append(obj)
                if args.verbose and obj.get("event") != "result":
                    print(f"    {model} L={fmt_length(L)}: {obj}", flush=True)

    def read_err():
        for line in proc.stderr:
            err_chunks.append(line)
            if len(err_chunks) > 400:
                del err_chunks[:200]

    threads = [threading.Thread(target=read_out, daemon=True), threading.Thread(target=read_err, daemon=True)]
    for t in threads:
        t.start()

    killed = None
    max_rss = 0
    hard_timeout = args.timeout + max(30.0, 0.1 * args.timeout)  # the child watches its own budget first
    while proc.poll() is None:
        rss = _rss_bytes(proc.pid)
        if rss:
            max_rss = max(max_rss, rss)
            if host_cap_b and rss > host_cap_b:
                killed = f"out of memory (killed at the {fmt_bytes(host_cap_b)} resident cap)"
                proc.kill()
                break
        if time.perf_counter() - t0 > hard_timeout:
            killed = f"timeout (>{args.timeout:.0f} s)"
            proc.kill()
            break
        time.sleep(0.05)
    proc.wait()
    for t in threads:
        t.join(timeout=5)
    wall = time.perf_counter() - t0

    result = next((o for o in reversed(lines) if o.get("event") == "result"), None)
    warm = next((o["seconds"] for o in lines if o.get("event") == "warmup"), None)
    steps = [o["seconds"] for o in lines if o.get("event") == "step"]
    if result is None:
        result = {"model": model, "L": L, "device": args.device, "step_times_s": steps}
        if warm is not None:
            result["warmup_s"] = warm
        if steps:
            result["s_per_step"] = statistics.median(steps)
            result["tok_per_s"] = L / result["s_per_step"]
        if killed:
            result["status"] = killed
        elif proc.returncode is not None and proc.returncode < 0:
            sig = -proc.returncode
            # SIGKILL with no cap of ours: almost always the kernel's OOM killer.
            result["status"] = "out of memory (killed by signal 9)" if sig == 9 else f"error: killed by signal {sig}"
        else:
            tail = "".join(err_chunks[-30:])
            oom = any(s in tail.lower() for s in ("out of memory", "memoryerror", "can't allocate memory",
                                                  "cannot allocate memory", "bad_alloc"))
            result["status"] = "out of memory" if oom else f"error: exit code {proc.returncode}"
            result["detail"] = tail[-1500:]
        if not args.device.startswith("cuda"):
            result["peak_mem_bytes"] = max_rss or None
            result["mem_kind"] = "peak RSS seen by the parent (child died)"
    result.pop("event", None)
    result["observed_max_rss_bytes"] = max_rss or None
    result["wall_s"] = wall
    if result.get("status", "").startswith("error") and "detail" not in result:
        result["detail"] = "".join(err_chunks[-30:])[-1500:]
    return result


def _failed(rec: dict) -> bool:
    return rec.get("status", "").startswith(_FATAL_PREFIXES)


def combine_rounds(recs: list[dict]) -> dict:
    """One record from the runs of one (model, L): the first failure if any run failed, else the
    run with the median time (the lower middle one for an even count), with every run's time
    listed in ``rounds_s_per_step`` and the largest peak memory of them all."""
    bad = [r for r in recs if r.get("status") != "ok"]
    if bad:
        return dict(bad[0], rounds_ok=len(recs) - len(bad))
    ranked = sorted(recs, key=lambda r: r["s_per_step"])
    out = dict(ranked[(len(ranked) - 1) // 2])
    if len(recs) > 1:
        out["rounds_s_per_step"] = [r["s_per_step"] for r in recs]
        peaks = [r["peak_mem_bytes"] for r in recs if r.get("peak_mem_bytes")]
        if peaks:
            out["peak_mem_bytes"] = max(peaks)
    return out


def machine_info(args) -> dict:
    info = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "device": args.device}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_total"] = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                            text=True, cwd=Path(__file__).parent).stdout.strip()
    except Exception:
        pass
    return info


# ====================================================================== reports
def _ratio_table(records: list[dict], lengths: list[int]) -> list[str]:
    by = {(r["model"], r["L"]): r for r in records}
    out = ["| L | seqformer tok/s | + copy attention tok/s | HF tok/s | seqformer / HF | + copy / HF |",
           "|---|---:|---:|---:|---:|---:|"]

    def tok(r):
        return r.get("tok_per_s") if r and r.get("status") == "ok" else None

    for L in lengths:
        s, c, h = by.get(("seqformer", L)), by.get(("seqformer_copy", L)), by.get(("hf", L))
        st, ct, ht = tok(s), tok(c), tok(h)
        ratio = f"{st / ht:.2f}x" if st and ht else ("HF failed" if st and h and h.get("status") != "ok" else "-")
        cratio = f"{ct / ht:.2f}x" if ct and ht else "-"
        out.append(f"| {fmt_length(L)} | {f'{st:,.0f}' if st else (s or {}).get('status', '-')} | "
                   f"{f'{ct:,.0f}' if ct else (c or {}).get('status', '-')} | "
                   f"{f'{ht:,.0f}' if ht else (h or {}).get('status', '-')} | {ratio} | {cratio} |")
    return out


def write_markdown(path: Path, data: dict) -> None:
    recs = sorted(data["results"], key=lambda r: (r["L"], MODELS.index(r["model"]) if r["model"] in MODELS else 99))
    lengths = sorted({r["L"] for r in recs})
    hf = {r["L"]: r.get("tok_per_s") for r in recs if r["model"] == "hf" and r.get("status") == "ok"}
    m = data["meta"]
    mem = "torch.cuda.max_memory_allocated" if m["device"].startswith("cuda") else "peak resident set size"
    lines = [f"# Forward+backward step, batch 1, {m['device']}",
             "",
             f"{m.get('date', '')} · {m.get('cpu', '')} · {m.get('cpu_count', '?')} cores · torch "
             f"{m.get('torch', '?')} · median of {m.get('repeats', '?')} steps after 1 warm-up"
             + (f", median run of {m['rounds']} (models interleaved)" if m.get("rounds", 1) > 1 else "") + " · "
             f"memory: {mem}" + (f" · THP_MEM_ALLOC_ENABLE=1 for every model at L >= {fmt_length(THP_MIN_ELEMS // DIM)}" if m.get("thp_mem_alloc") else ""),
             "",
             "| L | model | s/step | tok/s | peak memory | status | tok/s vs HF |",
             "|---|---|---:|---:|---:|---|---:|"]
    for r in recs:
        ok = r.get("status") == "ok"
        sps = f"{r['s_per_step']:.3f}" if ok and r.get("s_per_step") else "-"
        tps = f"{r['tok_per_s']:,.0f}" if ok and r.get("tok_per_s") else "-"
        peak = fmt_bytes(r.get("peak_mem_bytes")) if r.get("status") not in ("not installed",) and \
            not r.get("status", "").startswith("skipped") else "-"
        if not ok and peak != "-":
            peak = "≥ " + peak  # the child ended early: the most seen before it did
        vs = f"{r['tok_per_s'] / hf[r['L']]:.2f}x" if ok and r.get("tok_per_s") and hf.get(r["L"]) else "-"
        status = r.get("status", "?")
        if r.get("repeats_reduced_to"):
            status += f" ({r['repeats_reduced_to']} timed step(s))"
        lines.append(f"| {fmt_length(r['L'])} | {LABELS.get(r['model'], r['model'])} | {sps} | {tps} | "
                     f"{peak} | {status} | {vs} |")
    lines += ["", "## seqformer against Hugging Face, same run", ""] + _ratio_table(recs, lengths)
    lines += ["", "Peak memory of a failed run is the most the parent saw before the child ended.", ""]
    path.write_text("\n".join(lines))


def write_plot(path: Path, data: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return False
    recs = data["results"]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    markers = {"seqformer": "o", "seqformer_copy": "v", "hf": "s", "reformer_pytorch": "^", "sdpa": "D"}
    for model in MODELS:
        rs = sorted((r for r in recs if r["model"] == model), key=lambda r: r["L"])
        ok = [r for r in rs if r.get("status") == "ok"]
        fails = [r for r in rs if r.get("status") != "ok" and not r.get("status", "").startswith(("skipped", "not installed"))]
        if not rs or (not ok and not fails):
            continue
        label = LABELS[model]
        if fails:
            label += f" (fails at {fmt_length(fails[0]['L'])}: {fails[0]['status'].split(' (')[0]})"
        xs = [r["L"] for r in ok]
        line, = ax_t.plot(xs, [r["s_per_step"] for r in ok], marker=markers[model], label=label)
        ax_m.plot(xs, [r["peak_mem_bytes"] / GIB for r in ok], marker=markers[model], color=line.get_color(),
                  label=label)
        for r in fails[:1]:  # mark the first failure with a cross on the memory axis
            if r.get("peak_mem_bytes"):
                ax_m.plot([r["L"]], [r["peak_mem_bytes"] / GIB], marker="x", markersize=10, color=line.get_color())
    lengths = sorted({r["L"] for r in recs})
    for ax, title, unit in ((ax_t, "time per forward+backward step", "seconds"),
                            (ax_m, "peak memory", "GiB")):
        if any(len(ln.get_xdata()) for ln in ax.lines):  # log axes need a positive point
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
        ax.set_xticks(lengths)
        ax.set_xticklabels([fmt_length(L) for L in lengths])
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    if lengths:  # a slope-1 guide: linear cost
        L0, L1 = lengths[0], lengths[-1]
        seq = [r for r in recs if r["model"] == "seqformer" and r.get("status") == "ok"]
        if seq:
            base = min(seq, key=lambda r: r["L"])
            ax_t.plot([L0, L1], [base["s_per_step"] * L0 / base["L"], base["s_per_step"] * L1 / base["L"]],
                      ls=":", color="grey", label="linear in L")
    for ax in (ax_t, ax_m):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    m = data["meta"]
    fig.suptitle(f"dim 64, 2 layers, 4 heads, batch 1 · {m['device']} · {m.get('cpu', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_outputs(out_dir: Path, stem: str, data: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=1))
    write_markdown(out_dir / f"{stem}.md", data)
    try:
        write_plot(out_dir / f"{stem}.png", data)
    except Exception as e:  # a plot must never cost the measurements
        print(f"plot not written: {type(e).__name__}: {e}", file=sys.stderr)


# ====================================================================== main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list from {','.join(MODELS)}")
    p.add_argument("--lengths", default=",".join(fmt_length(L) for L in DEFAULT_LENGTHS),
                   help="comma list, e.g. 4K,16K,64K,256K,1M")
    p.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up (median kept)")
    p.add_argument("--rounds", type=int, default=1,
                   help="fresh-process runs of each (model, L), models interleaved; the median run is kept "
                        "(on a shared, noisy machine 3 keeps one slow minute from deciding a ratio)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per (model, L) child process")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--mem-cap-gb", type=float, default=20.0,
                   help="per-run cap: resident memory on CPU (the child is killed past it), "
                        "the CUDA allocator's limit on GPU; 0 = none")
    p.add_argument("--host-mem-cap-gb", type=float, default=20.0, help="resident-memory cap for CUDA runs")
    p.add_argument("--rlimit-as-gb", type=float, default=0.0,
                   help="also set RLIMIT_AS on the child (address space; torch maps a lot, so keep it generous)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the child (0 = torch's default)")
    p.add_argument("--python", default=None, help="interpreter for the children (default: this one)")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--name", default=None, help="output file stem (default speed_memory_<device>)")
    p.add_argument("--merge", action="store_true",
                   help="keep results of other (model, L) pairs already in the output JSON")
    p.add_argument("--no-skip", action="store_true", help="try larger L even after a failure")
    p.add_argument("--no-thp", action="store_true",
                   help="never set THP_MEM_ALLOC_ENABLE=1 (PyTorch's huge pages for big tensors); by default "
                        "children at L * dim >= 2**24 get it")
    p.add_argument("--verbose", "-v", action="store_true")
    # child mode (internal)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        return child_main(args)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        p.error(f"unknown model(s) {bad}; choose from {', '.join(MODELS)}")
    lengths = sorted(parse_length(s) for s in args.lengths.split(",") if s.strip())
    dev_tag = args.device.split(":")[0]
    stem = args.name or f"speed_memory_{dev_tag}"
    out_dir = Path(args.out_dir)

    meta = machine_info(args)
    if args.rounds < 1:
        p.error("--rounds must be 1 or more")
    meta.update(repeats=args.repeats, rounds=args.rounds, thp_mem_alloc=not args.no_thp, timeout_s=args.timeout, mem_cap_gb=args.mem_cap_gb,
                models=models, lengths=lengths)
    try:
        import torch

        meta["torch"] = torch.__version__
    except ImportError:
        pass
    results: list[dict] = []
    if args.merge and (out_dir / f"{stem}.json").exists():
        old = json.loads((out_dir / f"{stem}.json").read_text())
        results = [r for r in old.get("results", []) if not (r["model"] in models and r["L"] in lengths)]
    data = {"meta": meta, "results": results}

    print(f"speed_memory: models={models} lengths={[fmt_length(L) for L in lengths]} device={args.device} "
          f"repeats={args.repeats} timeout={args.timeout:.0f}s cap={args.mem_cap_gb} GiB", flush=True)
    # Length by length, models interleaved, so that all models at one L run within minutes of
    # each other; with --rounds N each (model, L) runs N times in that interleaved order and the
    # run with the median time is kept (peak memory: the largest of its runs).
    failed_at: dict[str, Optional[int]] = {m: None for m in models}
    missing: set[str] = set()
    for L in lengths:
        runs: dict[str, list[dict]] = {m: [] for m in models}
        for rnd in range(args.rounds):
            for model in models:
                if model in missing or (failed_at[model] is not None and not args.no_skip):
                    continue
                if runs[model] and _failed(runs[model][-1]):
                    continue  # a failure at this L is not retried in later rounds
                tag = f" (round {rnd + 1}/{args.rounds})" if args.rounds > 1 else ""
                print(f"  {LABELS[model]:<18} L={fmt_length(L):>5}{tag} ...", end=" ", flush=True)
                rec = run_one(model, L, args)
                if rec.get("status") == "ok":
                    print(f"{rec['s_per_step']:.3f} s/step  {rec['tok_per_s']:,.0f} tok/s  "
                          f"peak {fmt_bytes(rec.get('peak_mem_bytes'))}  ({rec['wall_s']:.0f} s)", flush=True)
                else:
                    print(f"{rec.get('status')}  ({rec['wall_s']:.0f} s)", flush=True)
                runs[model].append(rec)
        for model in models:
            if model in missing:
                rec = {"model": model, "L": L, "device": args.device, "status": "not installed"}
            elif not runs[model]:
                rec = {"model": model, "L": L, "device": args.device,
                       "status": "skipped (failed at smaller L)", "failed_at": failed_at[model]}
            else:
                rec = combine_rounds(runs[model])
                if _failed(rec):
                    failed_at[model] = L
                if rec.get("status") == "not installed":
                    missing.add(model)
            results.append(rec)
        write_outputs(out_dir, stem, data)
    write_outputs(out_dir, stem, data)
    print(f"wrote {out_dir / stem}.json/.md/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
