"""Bench conventions shared by bench/*.py: what ran where (device, commit, versions), a median-of-N timer,
FLOP counts from one place, a Markdown table and a JSON file in bench/results/<name>-<device>.json."""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("numpy", "torch", "selfext_native"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    return out


def median_time(fn, *, repeats: int = 5, warmup: int = 1, min_total_s: float = 0.0) -> dict:
    """Median wall time of fn() over `repeats` runs after `warmup` runs (seconds), with min and all runs."""
    for _ in range(warmup):
        fn()
    runs = []
    t_start = time.perf_counter()
    while len(runs) < repeats or time.perf_counter() - t_start < min_total_s:
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
        if len(runs) >= 200:
            break
    return {"median_s": statistics.median(runs), "min_s": min(runs), "runs": len(runs)}


def cuda_graph_seconds(call, batch: int, reps: int = 5, warm: int = 4) -> float:
    """Median seconds per call of `batch` calls call(0), ..., call(batch - 1) captured in one CUDA graph, so
    the time is the GPU's, not Python's launch overhead; call(0 .. warm - 1) run once on a side stream before
    the capture (warm-up, lazy initialization), and CUDA events bracket each of `reps` replays."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for k in range(min(warm, batch)):
            call(k)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for k in range(batch):
            call(k)
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3 / batch)
    return statistics.median(ts)


def attention_flops(T_q: int, T_k: int, n_heads: int, head_dim: int) -> float:
    """4 * D * H per visible (query, key) pair (QKᵀ and P·V, 2 FLOPs per multiply-add); queries are the
    last T_q positions, causal: query i sees i + 1 keys."""
    pairs = sum(range(T_k - T_q + 1, T_k + 1))
    return 4.0 * head_dim * n_heads * pairs


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_json(name: str, device: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{device_slug(device)}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cpu_steal_ticks() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat (Linux), or None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def cpu_steal_fraction(start, end) -> float | None:
    """The share of CPU time the hypervisor gave to other guests between two cpu_steal_ticks()."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return (end[0] - start[0]) / (end[1] - start[1])

