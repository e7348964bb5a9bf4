#!/usr/bin/env bash
# The GPU numbers issues #4 (trainer) and #7 (influence) ask for, in one command on one H100 (~9 min):
#   bash benchmarks/gpu_suite.sh [OUT_DIR]        (needs the package importable: pip install -e . or PYTHONPATH=src)
# Each benchmark prints ratios against its baseline measured in the same run; the outputs go to OUT_DIR.
set -uo pipefail
OUT=${1:-gpu-results}
mkdir -p "$OUT"
PY=${PY:-python3}
run() { echo "== $*" | tee -a "$OUT/suite.log"; timeout "${LIMIT:-400}" "$@" 2>&1 | grep -v Warning | tee -a "$OUT/suite.log"; }
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/suite.log"
# trainer: 370m compiled vs plain HF compiled, full and chunked loss (the 50% MFU goal), then 125m
run $PY benchmarks/train.py --models 370m --modes compiled --seq-len 1024 --micro-batch 16 --steps 12 --warmup 4 --loss full,chunked
run $PY benchmarks/train.py --models 125m --modes eager,compiled --seq-len 1024 --micro-batch 16 --steps 12 --warmup 4 --loss full,chunked
# influence: 125m, 1024-token documents, bf16; hook vs fused scoring, compiled; random vs reference projection
for proj in orthogonal reference; do
  run $PY benchmarks/influence.py --model 125m --seq-len 1024 --docs 256 --batch-size 16 --autocast bf16 --compile \
      --preconditioners none,ekfac --modes features,fused,fused-compiled,fused-exact-compiled --proj-dims "" \
      --projection $proj --full-space-max-entries 2000000000
done
