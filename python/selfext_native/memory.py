"""How much memory this process may still take: the smaller of the system's available memory and the
room left under a cgroup limit (containers, CI runners). Used to refuse a plan before allocating."""
from __future__ import annotations

import os
from typing import Optional


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return None if text in ("", "max") else int(text)


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_room() -> Optional[tuple[int, str]]:
    # cgroup v2: the process's own group (from /proc/self/cgroup), then the mount root.
    rel = ""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    rel = line.strip()[3:]
    except OSError:
        pass
    for base in {os.path.join("/sys/fs/cgroup", rel.lstrip("/")), "/sys/fs/cgroup"}:
        limit = _read_int(os.path.join(base, "memory.max"))
        if limit is not None:
            used = _read_int(os.path.join(base, "memory.current")) or 0
            return max(0, limit - used), f"cgroup limit {limit / 2**30:.1f} GiB"
    limit = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v1
    if limit is not None and limit < 1 << 60:
        used = _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes") or 0
        return max(0, limit - used), f"cgroup limit {limit / 2**30:.1f} GiB"
    return None


def available_bytes() -> tuple[Optional[int], str]:
    """(bytes this process can still allocate, where the figure comes from); (None, "") if unknown."""
    best, where = _meminfo_available(), "MemAvailable"
    cg = _cgroup_room()
    if cg is not None and (best is None or cg[0] < best):
        best, where = cg
    return best, (where if best is not None else "")
