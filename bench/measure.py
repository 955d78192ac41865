"""Timing and peak-memory measurement shared by the benchmarks."""
import time
from pathlib import Path

import torch


def _rss_bytes(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark of this process (Linux, ``clear_refs`` 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(fn, device, repeat=3):
    """Run ``fn()`` ``repeat`` times; return (best seconds, peak extra bytes of one call).

    Peak extra memory is the CUDA allocator's peak above the memory in use before the call
    on a GPU, and the growth of the process's peak RSS on the CPU (Linux only).
    """
    fn()  # warm-up: lazy initialisation, allocator caches
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        before = _rss_bytes("VmRSS")
        _reset_peak_rss()
        fn()
        peak = _rss_bytes("VmHWM") - before
    return best, peak


def devices():
    """The CPU always, and the GPU when CUDA is present."""
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda"))
    return found


def table(rows, columns):
    """Rows of dicts as a Markdown table over ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
