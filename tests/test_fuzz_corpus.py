"""The fuzz harness's committed corpus and a short campaign (tests/fuzz_gguf.py; docs/robustness.md).

Seeds must load and run; each regress-* file is an input the fuzzer once turned into a crash, a hang
or an untyped exception, and must now end in a working model or a SelfExtError. The short campaign
runs the fork server in a fresh interpreter (no threads at fork) on a few hundred mutated files.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fuzz_gguf

CORPUS = sorted(fuzz_gguf.CORPUS_DIR.glob("*.gguf.gz"))
TIMEOUT_S = 60.0  # per file; generous for a loaded machine or a sanitized build


def test_corpus_is_small():
    assert CORPUS, "no committed fuzz corpus"
    assert sum(p.stat().st_size for p in CORPUS) <= 1 << 20


@pytest.mark.parametrize("path", CORPUS, ids=[p.name.split(".")[0] for p in CORPUS])
def test_corpus_file(path, tmp_path):
    import gzip
    f = tmp_path / "case.gguf"
    f.write_bytes(gzip.decompress(path.read_bytes()))
    outcome = fuzz_gguf.replay_one(str(f), TIMEOUT_S, int(4 * 2**30))
    if path.name.startswith("seed-"):
        assert outcome.startswith("ok "), f"{path.name}: {outcome}"
    else:
        assert outcome.startswith(("ok", "error:")), f"{path.name}: {outcome}"


def test_mutations_are_deterministic():
    seeds = fuzz_gguf.load_seeds()
    parsed = [fuzz_gguf.parse(b) for _, b in seeds]
    for i in range(20):
        assert fuzz_gguf.make_case(5, i, seeds, parsed) == fuzz_gguf.make_case(5, i, seeds, parsed)


def test_mutator_survives_truncating_an_empty_input():
    # Seed 16, case 8068 truncates to 0 bytes and then again: randrange(0) once killed the campaign.
    seeds = fuzz_gguf.load_seeds()
    parsed = [fuzz_gguf.parse(b) for _, b in seeds]
    data, log, _ = fuzz_gguf.make_case(16, 8068, seeds, parsed)
    assert data == b"" and "truncate skipped (empty)" in log


def test_short_campaign(tmp_path):
    import selfext_native
    env = dict(os.environ)
    pkg_root = str(Path(selfext_native.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(Path(fuzz_gguf.__file__)), "--cases", "240", "--seed", "7", "--jobs", "2",
           "--batch", "60", "--timeout", str(TIMEOUT_S), "--quiet", "--out", str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["cases"] == 240, r.stderr[-2000:]
    assert (summary["crashes"], summary["hangs"], summary["untyped_exceptions"], summary["nonfinite_accepted"],
            summary["harness_errors"]) == (0, 0, 0, 0, 0), \
        f"seed 7: {summary['outcomes']}\n{r.stderr[-4000:]}"
    assert r.returncode == 0
