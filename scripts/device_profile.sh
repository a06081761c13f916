#!/usr/bin/env bash
# Decode-step A/B (PDL, the T_q = 1 attention kernel) and per-kernel profile on random-weight models (no
# model transfer): after the build stage of device_run.sh. Variants alternate twice; the PDL-off CUPTI
# tables give each kernel's own time.
set -u
cd "$(dirname "$0")/../bench"
run() { echo "--- $*"; env "$@" timeout 60 python3 profile_decode.py smollm2-shapes --steps 64 2>&1 | tail -1; }
for round in 1 2; do
  run SELFEXT_CUDA_PDL=1
  run SELFEXT_CUDA_PDL=1 SELFEXT_CUDA_SE_DECODE=1
  run SELFEXT_CUDA_PDL=0
done
echo "--- per-kernel, PDL off, smollm2-shapes"
SELFEXT_CUDA_PDL=0 timeout 60 python3 profile_decode.py smollm2-shapes --steps 16 --torch-profile 2>&1 | grep -v Warn | tail -16
echo "--- per-kernel, PDL off, llama-3-8b-q4_k_m-shapes"
SELFEXT_CUDA_PDL=0 timeout 120 python3 profile_decode.py llama-3-8b-q4_k_m-shapes --steps 16 --torch-profile 2>&1 | grep -v Warn | tail -16
