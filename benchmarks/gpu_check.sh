#!/usr/bin/env bash
# The GPU checks of issue 7 in one prepared call (a lent GPU machine is scarce; every stage has its
# own time limit and writes its results as it goes, so a cut-off call still returns the earlier
# stages):
#   1. tests/runtime/test_cuda.py: 64K tokens train within 4 GiB; CUDA = CPU for one checkpoint;
#      reversible = autograd on CUDA; bf16 autocast.
#   2. speed_memory on CUDA: seqformer at 4K-1M, exact SDPA at 4K-64K (no memory cap).
#   3. the largest length that trains within a 4 GiB cap, then within a 16 GiB cap
#      (torch.cuda.set_per_process_memory_fraction; one timed step).
#   4. the peers (HF ReformerModel, reformer-pytorch) merged into the table of stage 2.
#
# Usage, from the repository root:  OUT=/some/dir bash benchmarks/gpu_check.sh
# Results are written under $WORK (default /tmp/gpu_check) and packed after every stage into
# $OUT/gpu_check.tar.gz (one file: the device tool returns at most 8).
# Packages missing on the machine (biopython, reformer-pytorch and its needs) may sit as wheels in
# .whl/; they are installed into /tmp/site first. DEVICE, LENGTHS, FIT4, FIT16 and PEER_LENGTHS
# override the defaults, and T_TESTS, T_SPEED, T_SDPA, T_FIT4, T_FIT16, T_PEERS each stage's time limit
# in seconds (a dry run on a CPU: DEVICE=cpu LENGTHS=1K,2K FIT4=4K FIT16=8K ...).
set -u
OUT=${OUT:-benchmarks/results/gpu}
DEVICE=${DEVICE:-cuda}
LENGTHS=${LENGTHS:-4K,16K,64K,256K,1M}
SDPA_LENGTHS=${SDPA_LENGTHS:-4K,16K,64K}
FIT4=${FIT4:-1M,2M,4M}
FIT16=${FIT16:-4M,8M,16M}
PEER_LENGTHS=${PEER_LENGTHS:-4K,16K,64K,256K,1M}
PY=${PY:-python3}
WORK=${WORK:-/tmp/gpu_check}
NAME=gpu_check
# shellcheck source=benchmarks/gpu_stages.sh
source "$(dirname "$0")/gpu_stages.sh"

stage environment
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import torch, Bio; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'biopython', Bio.__version__)"
  nproc; } 2>&1 | tee "$WORK/env.txt"

stage "tests/runtime/test_cuda.py"
timeout ${T_TESTS:-80} $PY -m pytest -q -p no:cacheprovider -rs tests/runtime/test_cuda.py 2>&1 | tee "$WORK/test_cuda.log"

stage "speed and memory: seqformer and exact SDPA"
timeout ${T_SPEED:-130} $PY benchmarks/speed_memory.py --device "$DEVICE" --models seqformer --lengths "$LENGTHS" \
  --repeats 3 --timeout 45 --mem-cap-gb 0 --out-dir "$WORK" --name speed_memory_cuda
timeout ${T_SDPA:-60} $PY benchmarks/speed_memory.py --device "$DEVICE" --models sdpa --lengths "$SDPA_LENGTHS" \
  --repeats 3 --timeout 30 --mem-cap-gb 0 --out-dir "$WORK" --name speed_memory_cuda --merge

stage "largest length within 4 GiB"
timeout ${T_FIT4:-90} $PY benchmarks/speed_memory.py --device "$DEVICE" --models seqformer --lengths "$FIT4" \
  --repeats 1 --timeout 40 --mem-cap-gb 4 --out-dir "$WORK" --name fit_4gib

stage "largest length within 16 GiB"
timeout ${T_FIT16:-110} $PY benchmarks/speed_memory.py --device "$DEVICE" --models seqformer --lengths "$FIT16" \
  --repeats 1 --timeout 80 --mem-cap-gb 16 --out-dir "$WORK" --name fit_16gib

stage "peers: HF ReformerModel and reformer-pytorch"
timeout ${T_PEERS:-95} $PY benchmarks/speed_memory.py --device "$DEVICE" --models hf,reformer_pytorch --lengths "$PEER_LENGTHS" \
  --repeats 3 --timeout 35 --mem-cap-gb 0 --out-dir "$WORK" --name speed_memory_cuda --merge
stage done
