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
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    t0 = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        llm.logits(toks)
    stopped = time.perf_counter() - t0
    timer.cancel()
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
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
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
