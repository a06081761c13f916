#!/usr/bin/env bash
# Decode A/Bs on the device after device_run.sh build: the CUDA tests, the graph-timed decode
# attention bench, decode steps of random-weight models (no model transfer) for each knob under study,
# alternating, then per-kernel CUPTI tables of the default (PDL off, so each kernel's time is its own) and
# ncu on the 16-bit-code products. Knobs: the 16-bit-code products' rows per warp and warps per row
# (SELFEXT_CUDA_MVQ_NR, SELFEXT_CUDA_MVQ_KS), the warp-rows matvec (SELFEXT_CUDA_MV_WARP_ROWS=0: off), the
# L2 prefetch (SELFEXT_CUDA_PREFETCH=0: off), the Q/K/V products storing qkv_post's outputs themselves
# (SELFEXT_CUDA_QKV_STORE=1: on) and 128-thread decode attention blocks (SELFEXT_CUDA_SE_DEC_THREADS=128).
# Files under $OUT.
# Sections: scripts/device_decode_ab.sh [mega] [tests] [decmma] [ab] [bench] [ncu] (default: the last four, ~7 minutes
# after the build; split them over two calls when the build shares the first). mega: the decode
# megakernel's tests (a hang there is a barrier bug: a short timeout) and its A/B (SELFEXT_CUDA_MEGA=1,
# blocks per SM, its L2 prefetch). merge: the per-kernel table of the SmolLM2-shaped step (the in-kernel split
# merge it once compared was slower again on 2026-12-02 and is gone: docs/cuda_loop.md).
set -u
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
want() { [ $# -eq 0 ] && return 0; for x in $SECTIONS; do [ "$x" = "$1" ] && return 0; done; return 1; }
SECTIONS="${*:-tests ab bench ncu}"
cd "$(dirname "$0")/.."
if want tests; then
timeout 240 python3 -m pytest tests/test_llm_cuda.py tests/test_attention_cuda.py tests/test_quant_cuda.py -m cuda -q \
  -p no:cacheprovider -rfE -k "not errors_name" 2>&1 | tail -8
fi
if want bench; then
timeout 100 python3 bench/attention_cuda.py --decode-only --out "$OUT" 2>&1 | tail -12
echo "--- attention decode, SELFEXT_CUDA_SE_DEC_THREADS=128"
mkdir -p "$OUT/dec128"
SELFEXT_CUDA_SE_DEC_THREADS=128 timeout 100 python3 bench/attention_cuda.py --decode-only --out "$OUT/dec128" 2>&1 | tail -9
fi
if want mega; then
timeout 200 python3 -m pytest tests/test_llm_cuda.py -m cuda -q -p no:cacheprovider -rfE -k "megakernel" 2>&1 | tail -8
fi
if want prefill; then
echo "--- attention prefill (SE, prerot column), CoPE and decode, no flex"
timeout 240 python3 bench/attention_cuda.py --no-flex --out "$OUT" 2>&1 | tail -24
fi
cd bench
run() { echo "--- $1 $2"; env $2 timeout 60 python3 profile_decode.py $1 --steps 64 2>&1 | tail -1; }
if want mega; then
for round in 1 2; do
  run smollm2-shapes SELFEXT_CUDA_MEGA=0
  run smollm2-shapes SELFEXT_CUDA_MEGA=1
  run smollm2-shapes "SELFEXT_CUDA_MEGA=1 SELFEXT_CUDA_MEGA_BPS=1"
  run smollm2-shapes "SELFEXT_CUDA_MEGA=1 SELFEXT_CUDA_MEGA_BPS=4"
  run smollm2-shapes "SELFEXT_CUDA_MEGA=1 SELFEXT_CUDA_MEGA_PREFETCH=0"
  run smollm2-shapes "SELFEXT_CUDA_MEGA=1 SELFEXT_CUDA_MEGA_DIAG=1"  # barriers only
  run smollm2-shapes "SELFEXT_CUDA_MEGA=1 SELFEXT_CUDA_MEGA_DIAG=2"  # work only (wrong results)
done
fi
if want merge; then
  # the per-kernel table of the default (PDL off)
  echo "--- per-kernel, PDL off, smollm2-shapes"
  SELFEXT_CUDA_PDL=0 timeout 90 python3 profile_decode.py smollm2-shapes --steps 16 --torch-profile 2>&1 | grep -v Warn | tail -9
fi
if want decmma; then
# the tensor-core decode attention (default) against the CUDA-core kernel in decode steps, alternating
for round in 1 2; do
  for m in smollm2-shapes llama-3-8b-q4_k_m-shapes; do
    run $m SELFEXT_CUDA_SE_DEC_MMA=0
    run $m SELFEXT_CUDA_SE_DEC_MMA=1
  done
done
fi
if want ab; then
for round in 1 2; do
  for m in llama-3-8b-q4_k_m-shapes llama-3-8b-q4_0-shapes; do
    run $m SELFEXT_CUDA_MVQ_KS=1
    run $m SELFEXT_CUDA_MVQ_KS=auto
    run $m SELFEXT_CUDA_MVQ_KS=2
    run $m "SELFEXT_CUDA_MVQ_KS=auto SELFEXT_CUDA_MVQ_NR=2"
  done
  run smollm2-shapes SELFEXT_CUDA_MV_WARP_ROWS=0
  run smollm2-shapes SELFEXT_CUDA_PREFETCH=0
  run smollm2-shapes SELFEXT_CUDA_QKV_STORE=0
  run smollm2-shapes SELFEXT_CUDA_QKV_STORE=1
  run llama-3-8b-q4_k_m-shapes SELFEXT_CUDA_QKV_STORE=1
  run smollm2-shapes SELFEXT_CUDA_SE_DEC_THREADS=128
  run llama-3-8b-q4_k_m-shapes SELFEXT_CUDA_SE_DEC_THREADS=128
done
for m in smollm2-shapes llama-3-8b-q4_k_m-shapes; do
  echo "--- per-kernel, PDL off, $m"
  SELFEXT_CUDA_PDL=0 timeout 90 python3 profile_decode.py $m --steps 16 --torch-profile 2>&1 | grep -v Warn | tail -9
done
fi
if want bench; then
for ks in 1 auto; do
  echo "--- quant_cuda decode, SELFEXT_CUDA_MVQ_KS=$ks"
  SELFEXT_CUDA_MVQ_KS=$ks timeout 100 python3 quant_cuda.py --decode-only --types Q4_K,Q6_K,Q4_0 \
    --out "$OUT/quant-ks-$ks.json" 2>&1 | grep "^| Q"
done
fi
# where the 16-bit-code products' time goes (one cold call per shape; scripts/ncu_mvq.py)
if want ncu && command -v ncu >/dev/null; then
  echo "--- ncu mvq"
  timeout 100 ncu -k regex:mvq_ --section SpeedOfLight --section WarpStateStats --section Occupancy \
    --section LaunchStats python3 ../scripts/ncu_mvq.py Q4_K Q6_K > "$OUT/ncu_mvq.txt" 2>&1
  grep -E "mvq_|Duration|DRAM Throughput|L1/TEX Cache Throughput|Achieved Occupancy|Registers Per" "$OUT/ncu_mvq.txt" | head -60
fi
