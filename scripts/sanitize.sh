#!/usr/bin/env bash
# The Python test suite against a debug build of the native core under AddressSanitizer and
# UndefinedBehaviorSanitizer (CMake option SELFEXT_SANITIZE: -fsanitize=address,undefined -O1 -g).
#
#   scripts/sanitize.sh                # build (cached in $WORK/build) and run the default subset
#   scripts/sanitize.sh tests/test_llm.py -k chunk   # other pytest arguments
#
# Python is not built with ASan, so libasan is preloaded; leak checking is off because the interpreter
# keeps its objects alive at exit by design. Any ASan report or UBSan finding aborts the process
# (halt_on_error), so a clean run is a passing pytest run. The default subset runs the native code
# on every path the tests reach (kernels, quant formats, model forward, loading) in about ten minutes
# on two cores; the fuzz corpus test feeds the sanitized loader hostile files.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${SANITIZE_WORK:-/tmp/selfext_sanitize}
PY=${PYTHON:-python}
mkdir -p "$WORK"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  rm -rf "$WORK/src" && mkdir -p "$WORK/src"
  (cd "$ROOT" && tar --exclude=./build --exclude=./.git --exclude=./bench/.models -cf - .) | tar -xf - -C "$WORK/src"
  # CUDA off: the sanitizers instrument host code; compute-sanitizer covers the kernels.
  SELFEXT_CUDA=OFF "$PY" -m pip install --no-build-isolation --no-deps -q --upgrade --target "$WORK/site" \
    -C build-dir="$WORK/build" -C cmake.build-type=Debug -C cmake.define.SELFEXT_SANITIZE=ON \
    -C cmake.define.SELFEXT_CUDA=OFF "$WORK/src"
fi
ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
if [[ $# -eq 0 ]]; then
  set -- tests/test_foundation.py tests/test_quant_cpu.py tests/test_attention_cpu.py tests/test_gguf_model.py \
         tests/test_llm.py tests/test_tokenizer.py tests/test_chat_template.py tests/test_sampling.py \
         tests/test_fuzz_corpus.py -x -q -p no:cacheprovider
fi
cd "$ROOT"
export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export SELFEXT_EXPECT_SANITIZED=1
# The sanitized module must be the one imported, and it must carry ASan.
"$PY" - <<'PYEOF'
import os, selfext_native._native as n
so = n.__file__
assert so.startswith(os.environ["PYTHONPATH"].split(":")[0]), f"imported {so}, not the sanitized build"
assert b"__asan_init" in open(so, "rb").read(), f"{so} is not built with AddressSanitizer"
print(f"sanitized module: {so}")
PYEOF
exec "$PY" -m pytest "$@"
