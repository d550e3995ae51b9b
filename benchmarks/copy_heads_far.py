"""Do the copy heads find a copy 250K and 1M bases back? (no network, no training)

The copy layer's heads are fixed functions of the bases (content codes, LSH, one-hot values),
so whether they *find* an earlier copy at a distance can be measured without a trained model:
``P + S + F(d) + S'`` (S and S' from the held-out 10% of E. coli, S' diverged by
``--divergence``; the filler F from anywhere in the genome, it is never scored), and for each
head the share of S' positions (past its first 24 bases) where its most likely next base is
right. The gate that mixes the heads into the network needs training; this is the ceiling a
trained gate could reach (with persistence: the pointer heads'), and it shows whether LSH
keeps the copy among a query's look-back keys at 1M.

    python benchmarks/copy_heads_far.py --distances 61440,250000,1000000 --divergence 0,0.1,0.2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reformer_seq.genome.encoded import load_genome  # noqa: E402
from reformer_seq.model.attention.copy_attention import CopyAttention  # noqa: E402
from reformer_seq.tasks.evaluation.likelihood import is_base  # noqa: E402
from reformer_seq.tasks.recall import diverge, reverse_complement  # noqa: E402

ECOLI = REPO / "data" / "Ecoli_K12_MG1655.fasta.gz"
MAX_ELEMS = 4e8  # skip a layer whose (L, H, D) attention buffers exceed this (1.6 GB each in float32)
SEEDS = ("11101010000001010111", "01000011111111000010", "10110100011000101101", "00011101100110111000")


def clean_start(ids: np.ndarray, lo: int, hi: int, n: int, rng: np.random.Generator) -> int:
    bad = np.concatenate([[0], np.cumsum(~is_base(ids))])
    for _ in range(1000):
        s = int(rng.integers(lo, hi - n))
        if bad[s + n] == bad[s]:
            return s
    raise ValueError(f"no clean {n}-base stretch in [{lo}, {hi})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distances", default="61440,250000,1000000")
    ap.add_argument("--divergence", default="0,0.1,0.2")
    ap.add_argument("--m", type=int, default=512)
    ap.add_argument("--segments", type=int, default=3)
    ap.add_argument("--eval-hashes", type=int, default=4)
    ap.add_argument("--seeds", action="store_true", help="also the 4 spaced seeds (8 heads; 8x the cost)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "copy_heads_far.json"))
    args = ap.parse_args()

    rec = max(load_genome(ECOLI), key=lambda r: len(r.ids))
    ids = np.asarray(rec.ids, dtype=np.int64)
    split = int(len(ids) * 0.9)  # the held-out 10% is ids[split:]
    layers = {"k12+persist": CopyAttention(12, temperature=11.0, n_hashes=2, eval_hashes=args.eval_hashes,
                                           persist=True).eval()}
    if args.seeds:
        layers["seeds+persist"] = CopyAttention(12, temperature=11.0, n_hashes=2, eval_hashes=args.eval_hashes,
                                                seeds=SEEDS, persist=True).eval()
    rows = []
    for d in (int(x) for x in args.distances.split(",")):
        for div in (float(x) for x in args.divergence.split(",")):
            for reverse in (False, True):
                rng = np.random.default_rng([d, int(div * 100), int(reverse)])
                acc: dict[str, list] = {}
                t0 = time.time()
                for _ in range(args.segments):
                    s_at = clean_start(ids, split, len(ids), args.m, rng)
                    p_at = clean_start(ids, split, len(ids), 1024, rng)
                    f_at = clean_start(ids, 0, split, d, rng)  # filler from the training part (never scored)
                    S = ids[s_at:s_at + args.m]
                    last, _ = diverge(reverse_complement(S) if reverse else S, rng, div)
                    seq = np.concatenate([ids[p_at:p_at + 1024], S, ids[f_at:f_at + d], last])
                    tok = torch.from_numpy(seq)[None]
                    t = torch.arange(len(seq) - len(last) + 24, len(seq) - 1)
                    nxt = tok[0, t + 1] - 4
                    for name, layer in layers.items():
                        if len(seq) * layer.heads * layer.dim_head > MAX_ELEMS:
                            continue  # (B, L, H, D) buffers of several GB: too big for this machine
                        with torch.no_grad():
                            p, seen = layer.next_base(tok)
                        right = ((p[0, t].argmax(-1) == nxt[:, None]) & seen[0, t]).float().mean(0)  # (heads,)
                        strand = slice(1, None, 2) if reverse else slice(0, None, 2)
                        heads = right[:layer.heads][strand]
                        acc.setdefault(f"{name} best k-mer/seed head", []).append(float(heads.max()))
                        if layer.persist:
                            acc.setdefault(f"{name} pointer head", []).append(float(right[layer.heads:][strand][0]))
                row = {"distance": d, "divergence": div, "reverse": reverse,
                       **{k: float(np.mean(v)) for k, v in acc.items()}}
                rows.append(row)
                print(json.dumps(row), f"[{time.time() - t0:.0f} s]", flush=True)
    out = Path(args.out)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"segments": args.segments, "m": args.m, "rows": rows}, indent=1))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
