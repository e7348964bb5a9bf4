#!/usr/bin/env bash
# The GPU numbers issues #4 (trainer) and #7 (influence) ask for, in one command on one H100/H200,
# in priority order under one wall-clock budget (a device lease is 15 minutes, machine start included):
#   SUITE_BUDGET=540 bash benchmarks/gpu_suite.sh [OUT_DIR]   (needs thresher importable: PYTHONPATH=src)
# A step starts only while at least its minimum time is left, and is cut at the budget; every step appends
# to OUT_DIR/suite.log as it goes, so a cut run still returns what finished. Each benchmark prints ratios
# against its baseline measured in the same run.
set -uo pipefail
OUT=${1:-gpu-results}
mkdir -p "$OUT"
PY=${PY:-python3}
BUDGET=${SUITE_BUDGET:-540}
START=$(date +%s)
log() { echo "$*" | tee -a "$OUT/suite.log"; }
# grep line-buffered (where it can), so suite.log holds every finished line even if the whole command is killed
LB=; echo | grep --line-buffered -q '' 2>/dev/null && LB=--line-buffered
# step MIN_SECONDS CMD...: run CMD if MIN_SECONDS are left, cut at the budget
step() {
  local min=$1; shift
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if (( left < min )); then log "== skipped (${left}s left, needs ${min}s): $*"; return; fi
  log "== [${left}s left] $*"
  PYTHONUNBUFFERED=1 timeout "$left" "$@" 2>&1 | grep $LB -v Warning | tee -a "$OUT/suite.log"
  local rc=${PIPESTATUS[0]}
  if (( rc )); then log "== exit $rc (124: cut at the budget; 137: killed, e.g. out of memory)"; fi
}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/suite.log"
# 1. #4: 370m, bf16, 16x1024: thresher (chunked loss, per-layer compile: minutes less compiling) vs plain
#    HF + AdamW under whole-model torch.compile (the 50% MFU goal)
step 200 $PY benchmarks/train.py --models 370m --modes compiled-layers --seq-len 1024 --micro-batch 16 --steps 12 --warmup 4 --loss chunked
# 2. #7: 125m scoring, 1024-token docs, bf16, fused + compiled, vs compiled training (>= 1.0x, >= 40% of the FLOP limit)
step 150 $PY benchmarks/influence.py --model 125m --seq-len 1024 --docs 256 --batch-size 16 --autocast bf16 --compile \
    --preconditioners ekfac --modes fused,fused-compiled --proj-dims "" --projection orthogonal --reps 2
# 3. #7: the refresh of the reference projection at 125m (full-space factors, eigendecompositions), one task
step 120 $PY benchmarks/influence.py --model 125m --seq-len 1024 --docs 64 --batch-size 16 --autocast bf16 \
    --preconditioners ekfac --modes fused --proj-dims "" --projection reference --full-space-max-entries 2000000000 --reps 1
# 4. #4: the rest of the trainer table: 125m all modes, 370m whole-model compile with both losses
step 150 $PY benchmarks/train.py --models 125m --modes eager,compiled,compiled-layers --seq-len 1024 --micro-batch 16 --steps 12 --warmup 4 --loss full,chunked
step 300 $PY benchmarks/train.py --models 370m --modes compiled --seq-len 1024 --micro-batch 16 --steps 12 --warmup 4 --loss chunked,full
log "== done in $(( $(date +%s) - START ))s"
