"""Interruption, memory planning and concurrency of the LLM object (issue 11)."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import selfext_native.llm as llm_mod
from selfext_native import LLM
from selfext_native.errors import ArgumentError, OutOfMemoryError

import gguf_factory

# Big enough that a 4k-token run takes seconds on 2 cores, so an interrupt lands mid-run.
SLOW = dict(n_layer=4, n_embd=512, n_head=8, n_head_kv=2, n_ff=1024, n_vocab=300, n_ctx_train=4096, qtype="Q8_0")
SMALL = dict(n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=300, n_ctx_train=128, qtype="Q8_0")


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    return gguf_factory.write_model(tmp_path_factory.mktemp("m") / "slow.gguf", seed=3, **SLOW)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return gguf_factory.write_model(tmp_path_factory.mktemp("m") / "small.gguf", seed=4, **SMALL)


def test_ctrl_c_stops_a_long_run_and_leaves_the_llm_usable(slow_model):
    llm = LLM(slow_model, n_ctx=4096, n_batch=256, n_threads=2)
    toks = np.random.default_rng(0).integers(0, 300, size=4000)
    # A shell that starts us in the background ignores SIGINT (and Python then installs no handler);
    # a terminal's Ctrl-C reaches a process with the default disposition, which this test needs.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    t0 = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            llm.logits(toks)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    stopped = time.perf_counter() - t0
    # Native code checks the flag between layers: the interrupt lands within a fraction of a second.
    assert stopped < 0.3 + 1.0, f"took {stopped:.2f} s to stop"
    # The cache holds the complete chunks only, and what the object believes it holds.
    assert llm.n_past % 256 == 0 and llm.n_past < 4000
    assert llm._cache_tokens == [int(t) for t in toks[:llm.n_past]]
    # Usable afterwards: continuing from the kept chunks equals a fresh run.
    short = toks[:300]
    np.testing.assert_array_equal(llm.logits(short), LLM(slow_model, n_ctx=4096, n_batch=256, n_threads=2).logits(short))


def test_cli_exits_130_without_traceback_on_ctrl_c(slow_model, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("the quick brown fox jumps over the lazy dog " * 10)
    # --ignore-eos and a long -n keep it generating for seconds; the interrupt is sent as soon as the
    # first generated text appears, so it lands mid-run however fast the machine is.
    with subprocess.Popen([sys.executable, "-m", "selfext_native.cli", "run", "-m", str(slow_model), "-f",
                           str(prompt), "-c", "4096", "-n", "3500", "--temp", "0", "--ignore-eos", "-t", "2"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          # the disposition a terminal gives, even when this run's shell ignores SIGINT
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as proc:
        first = proc.stdout.read(1)
        assert first and proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err


def test_memory_plan_is_refused_before_allocating(small_model, monkeypatch):
    monkeypatch.setattr(llm_mod, "available_bytes", lambda: (10 << 20, "cgroup limit 0.0 GiB"))
    with pytest.raises(OutOfMemoryError, match=r"needs \d+ MiB .* only 10 MiB are available \(cgroup"):
        LLM(small_model, n_ctx=100000, n_threads=1)
    LLM(small_model, n_ctx=64, n_threads=1)  # a plan that fits still loads


def test_two_objects_in_two_threads_match_single_use(small_model):
    toks = list(range(1, 60))
    alone = LLM(small_model, n_threads=1).logits(toks)
    results = {}

    def work(i):
        results[i] = LLM(small_model, n_threads=1).logits(toks)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        np.testing.assert_array_equal(results[i], alone)


def test_one_object_used_from_two_threads_is_refused(slow_model):
    llm = LLM(slow_model, n_ctx=4096, n_threads=1)
    toks = np.arange(2000) % 300
    errors = []
    started = threading.Event()

    def long_run():
        started.set()
        llm.logits(toks)

    t = threading.Thread(target=long_run)
    t.start()
    started.wait()
    time.sleep(0.2)
    try:
        llm.logits([1, 2, 3])
    except ArgumentError as e:
        errors.append(str(e))
    t.join()
    assert errors and "another thread" in errors[0]
    assert llm.n_past == 2000  # the first run completed intact


# --- Non-finite element-wise tensors are refused at load ------------------------------------------------

_F32_NAN, _F32_INF, _F32_NINF = b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff"


def _with_values(path, model_kw: dict, name: str, at: int, value: bytes, as_half: str = "") -> str:
    """A valid model whose tensor `name` holds `value` (raw bytes of one element) at element `at`;
    as_half="F16"/"BF16" first stores that (F32) tensor in the half type."""
    from dataclasses import replace
    spec = gguf_factory.model_spec(**model_kw)
    tensors = gguf_factory.materialize(spec)
    out = []
    for t in tensors:
        if t.name == name:
            data = bytearray(t.data)
            if as_half:
                f = np.frombuffer(bytes(data), dtype=np.float32)
                half = (f.astype(np.float16).view(np.uint16) if as_half == "F16"
                        else (f.view(np.uint32) >> 16).astype(np.uint16))
                data = bytearray(half.tobytes())
                t = replace(t, qtype=1 if as_half == "F16" else 30)
            data[at * len(value):(at + 1) * len(value)] = value
            t = replace(t, data=bytes(data))
        out.append(t)
    assert any(t.name == name for t in tensors), name
    return gguf_factory.write_raw(path, spec.kvs, out)


_LLAMA = dict(arch="llama", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=256, n_vocab=300, qtype="Q8_0")
_QWEN2 = dict(_LLAMA, arch="qwen2")
_COPE = dict(arch="selfext-cope", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=256, n_vocab=300,
             qtype="Q8_0", head_dim=64, rope_dim=0, cope={"npos_max": 16, "per_head": True})

NONFINITE_CASES = {
    "attn_norm-nan": (_LLAMA, "blk.0.attn_norm.weight", 5, _F32_NAN, ""),
    "ffn_norm-ninf": (_LLAMA, "blk.1.ffn_norm.weight", 63, _F32_NINF, ""),
    "output_norm-inf": (_LLAMA, "output_norm.weight", 0, _F32_INF, ""),
    "attn_norm-f16-inf": (_LLAMA, "blk.1.attn_norm.weight", 7, b"\x00\x7c", "F16"),
    "ffn_norm-bf16-nan": (_LLAMA, "blk.0.ffn_norm.weight", 9, b"\xc0\x7f", "BF16"),
    "q-bias-nan": (_QWEN2, "blk.0.attn_q.bias", 3, _F32_NAN, ""),
    "k-bias-inf": (_QWEN2, "blk.1.attn_k.bias", 0, _F32_INF, ""),
    "v-bias-nan": (_QWEN2, "blk.0.attn_v.bias", 31, _F32_NAN, ""),
    "cope-pos-nan": (_COPE, "blk.1.cope_pos.weight", 1000, _F32_NAN, ""),
    "rope-freqs-inf": (dict(_LLAMA, rope_freqs=True), "rope_freqs.weight", 2, _F32_INF, ""),
}


@pytest.mark.parametrize("case", sorted(NONFINITE_CASES))
def test_nonfinite_norms_and_biases_are_refused_naming_the_tensor(tmp_path, case):
    from selfext_native.errors import GGUFError
    from selfext_native.gguf_model import load_model_description

    model_kw, name, at, value, half = NONFINITE_CASES[case]
    path = _with_values(tmp_path / f"{case}.gguf", model_kw, name, at, value, half)
    with pytest.raises(GGUFError, match=rf"tensor '{name}' holds 1 non-finite value.*element {at} is (nan|inf|-inf)"):
        load_model_description(path)
    with pytest.raises(GGUFError, match=name):
        LLM(path, n_ctx=32, n_threads=1)
    LLM(path, vocab_only=True)  # the tokenizer does not read the weights


def test_large_finite_norm_values_still_load(tmp_path):
    # Only NaN/Inf are refused: a huge but finite value is a legal (if odd) weight.
    path = _with_values(tmp_path / "big.gguf", _LLAMA, "blk.0.attn_norm.weight", 4, b"\xff\xff\x7f\x7f", "")
    LLM(path, n_ctx=32, n_threads=1).logits([1, 2, 3])
