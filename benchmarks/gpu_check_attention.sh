#!/usr/bin/env bash
# The GPU checks of issue 23 (the fused attention backend) in one prepared call of at most ~8 minutes.
# Every stage has its own time limit and writes its results as it goes (JSON lines, and the tarball
# is repacked after every stage), so a cut-off call still returns the earlier stages:
#   1. environment (GPU, torch, triton)                                            ~5 s
#   2. correctness on the device: compiled FlexAttention (float32) against the reference path
#      (float64) on the same GPU; LSH 4 rounds with padding, blocks 128/32/16, narrow and
#      full-width index lists; local; copy attention (D = 48)     T_CORRECT (default 100 s)
#   3. one LSH layer forward + backward at 64K and 1M: fused vs reference (GPU and CPU
#      policy): first call (compile) time, median step, peak memory, dynamo recompiles
#                                                                    T_LAYER (default 80 s)
#   4. training steps, benchmark config (speed_memory.py's seqformer) at 4K/64K/1M: median step,
#      warm-up (compile) time, peak memory                           T_STEPS (default 110 s)
#   5. the default config's model with copy attention (seqformer_copy) at 4K/64K  T_COPY (50 s)
#   6. peers in the same run: exact SDPA, HF ReformerModel, reformer-pytorch at 4K/64K
#                                                                    T_PEERS (default 110 s)
# Usage, from the repository root:  OUT=/some/dir bash benchmarks/gpu_check_attention.sh
# Results under $WORK (default /tmp/gpu_check_attention), packed into $OUT/gpu_check_attention.tar.gz.
# Wheels for missing packages (transformers, reformer-pytorch) may sit in .whl/ (installed into /tmp/site).
#
# CPU dry run (checks that every stage runs; eager FlexAttention, tiny lengths), about 5 minutes; on a
# CPU the eager steps are slow (~15 s per layer at 1K) and the seqformer step stages may time out:
#   OUT=/tmp/dry DEVICE=cpu SEQFORMER_KERNEL=gpu CORRECT_L=256 LAYER_LENGTHS=1K STEP_LENGTHS=1K \
#     COPY_LENGTHS=1K PEER_LENGTHS=1K bash benchmarks/gpu_check_attention.sh
set -u
OUT=${OUT:-benchmarks/results/gpu}
DEVICE=${DEVICE:-cuda}
CORRECT_L=${CORRECT_L:-1024}
LAYER_LENGTHS=${LAYER_LENGTHS:-64K,1M}
STEP_LENGTHS=${STEP_LENGTHS:-4K,64K,1M}
COPY_LENGTHS=${COPY_LENGTHS:-4K,64K}
PEER_LENGTHS=${PEER_LENGTHS:-4K,64K}
PY=${PY:-python3}
WORK=${WORK:-/tmp/gpu_check_attention}
NAME=gpu_check_attention
# shellcheck source=benchmarks/gpu_stages.sh
source "$(dirname "$0")/gpu_stages.sh"

stage environment
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)
try:
    import triton; print('triton', triton.__version__)
except Exception as e: print('triton', e)"
  git rev-parse HEAD 2>/dev/null; date -u; nproc; } 2>&1 | tee "$WORK/env.txt"

stage "correctness on the device"
timeout ${T_CORRECT:-100} $PY benchmarks/gpu_attention_check.py correctness --device "$DEVICE" --length "$CORRECT_L" \
  --out "$WORK/correctness.jsonl" 2>&1 | tail -n 40

stage "one LSH layer: fused vs reference"
timeout ${T_LAYER:-80} $PY benchmarks/gpu_attention_check.py layer --device "$DEVICE" --lengths "$LAYER_LENGTHS" \
  --budget $(( ${T_LAYER:-80} - 15 )) --out "$WORK/layer.jsonl" 2>&1 | tail -n 20

stage "training steps: benchmark config"
timeout ${T_STEPS:-110} $PY benchmarks/speed_memory.py --device "$DEVICE" --models seqformer --lengths "$STEP_LENGTHS" \
  --repeats 3 --timeout 45 --mem-cap-gb 0 --out-dir "$WORK" --name steps

stage "training steps: default config's copy attention"
timeout ${T_COPY:-50} $PY benchmarks/speed_memory.py --device "$DEVICE" --models seqformer_copy --lengths "$COPY_LENGTHS" \
  --repeats 3 --timeout 30 --mem-cap-gb 0 --out-dir "$WORK" --name steps --merge

stage "peers: SDPA, HF ReformerModel, reformer-pytorch"
timeout ${T_PEERS:-110} $PY benchmarks/speed_memory.py --device "$DEVICE" --models sdpa,hf,reformer_pytorch \
  --lengths "$PEER_LENGTHS" --repeats 3 --timeout 30 --mem-cap-gb 0 --out-dir "$WORK" --name steps --merge
stage done
