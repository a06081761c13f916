#!/usr/bin/env bash
# The stationary layout of the 16-bit-code decode products (SELFEXT_CUDA_MVQ_STAT) on the device, after
# device_run.sh build: the CUDA tests, decode steps of random-weight models with both layouts and (the
# small model) with and without the L2 prefetch, alternating; the standalone products both ways; ncu on
# the default layout. Files under $OUT.
set -u
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
timeout 240 python3 -m pytest tests/test_llm_cuda.py tests/test_attention_cuda.py tests/test_quant_cuda.py -m cuda -q \
  -p no:cacheprovider -rfE -k "not errors_name" 2>&1 | tail -6
cd bench
run() { echo "--- $1 $2"; env $2 timeout 60 python3 profile_decode.py $1 --steps 64 2>&1 | tail -1; }
for round in 1 2; do
  for m in llama-3-8b-q4_k_m-shapes llama-3-8b-q4_0-shapes; do
    run $m SELFEXT_CUDA_MVQ_STAT=0
    run $m SELFEXT_CUDA_MVQ_STAT=1
  done
  run smollm2-shapes SELFEXT_CUDA_PREFETCH=0
  run smollm2-shapes SELFEXT_CUDA_PREFETCH=1
done
for st in 0 1; do
  echo "--- quant_cuda decode, SELFEXT_CUDA_MVQ_STAT=$st"
  SELFEXT_CUDA_MVQ_STAT=$st timeout 120 python3 quant_cuda.py --decode-only --types Q4_K,Q6_K,Q4_0 --out "$OUT/quant-stat$st.json" 2>&1 | grep "^| Q"
done
echo "--- per-kernel, PDL off, llama-3-8b-q4_k_m-shapes"
SELFEXT_CUDA_PDL=0 timeout 90 python3 profile_decode.py llama-3-8b-q4_k_m-shapes --steps 16 --torch-profile 2>&1 | grep -v Warn | tail -12
if command -v ncu >/dev/null; then
  echo "--- ncu mvq (stationary)"
  timeout 120 ncu -k regex:mvq_ --section SpeedOfLight --section Occupancy --section LaunchStats \
    python3 ../scripts/ncu_mvq.py Q4_K Q6_K Q4_0 > "$OUT/ncu_mvq_stat.txt" 2>&1
  grep -E "mvq_|Duration|DRAM Throughput|L1/TEX Cache Throughput|Achieved Occupancy|Registers Per" "$OUT/ncu_mvq_stat.txt" | head -80
fi
