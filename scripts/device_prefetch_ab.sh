#!/usr/bin/env bash
# L2 prefetch before the PDL wait (SELFEXT_CUDA_PREFETCH) A/B on the device, after device_run.sh build:
# the CUDA tests, decode steps of random-weight models (no model transfer) with and without the hint,
# alternating, the standalone decode products and decode attention both ways, then ncu on the 16-bit-code
# products (where their time goes). Files under $OUT.
set -u
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
timeout 200 python3 -m pytest tests/test_llm_cuda.py tests/test_attention_cuda.py tests/test_quant_cuda.py -m cuda -q \
  -p no:cacheprovider -rfE -k "not errors_name" 2>&1 | tail -4
cd bench
run() { echo "--- $1 $2"; env $2 timeout 60 python3 profile_decode.py $1 --steps 64 2>&1 | tail -1; }
for round in 1 2; do
  for m in smollm2-shapes llama-3-8b-q4_k_m-shapes llama-3-8b-q4_0-shapes; do
    run $m SELFEXT_CUDA_PREFETCH=0
    run $m SELFEXT_CUDA_PREFETCH=1
  done
done
for pf in 0 1; do
  echo "--- quant_cuda decode, SELFEXT_CUDA_PREFETCH=$pf"
  mkdir -p "$OUT/attn-pf$pf"
  SELFEXT_CUDA_PREFETCH=$pf timeout 120 python3 quant_cuda.py --decode-only --types Q4_K,Q6_K,Q4_0,Q4_1,Q8_0 --out "$OUT/quant-pf$pf.json" 2>&1 | tail -16
  echo "--- attention decode, SELFEXT_CUDA_PREFETCH=$pf"
  SELFEXT_CUDA_PREFETCH=$pf timeout 100 python3 attention_cuda.py --decode-only --out "$OUT/attn-pf$pf" 2>&1 | grep -v "^| H | D" | tail -9
done
if command -v ncu >/dev/null; then
  echo "--- ncu mvq"
  timeout 150 ncu -k regex:mvq_q --section SpeedOfLight --section WarpStateStats --section Occupancy \
    --section LaunchStats --section MemoryWorkloadAnalysis python3 ../scripts/ncu_mvq.py Q4_K Q6_K > "$OUT/ncu_mvq.txt" 2>&1
  grep -E "mvq_q|Duration|DRAM Throughput|Memory Throughput|L1/TEX Cache|Achieved Occupancy|Registers Per|Stall|Warp Cycles Per Issued|Theoretical Occ|Block Limit" "$OUT/ncu_mvq.txt" | head -90
else
  echo "no ncu"
fi
