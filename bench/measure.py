"""Timing, peak-memory measurement and the table format shared by the benchmarks."""
import ctypes
import ctypes.util
import functools
import time
from pathlib import Path

import torch

from tools.dist import usable_cpus

COLUMNS = ("component", "device", "input", "baseline", "ours", "time ratio", "memory ratio", "check")


def _rss_bytes(field):
    """A ``Vm*`` field of /proc/self/status in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark of this process (Linux, ``clear_refs`` 5)."""
    Path("/proc/self/clear_refs").write_text("5")


# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def _glibc():
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _settle_allocator():
    """Fix glibc's malloc thresholds where it moves them by itself once the process has
    freed a block of a few MiB or more (mmap threshold 32 MiB, trim threshold 64 MiB).

    Below them, freed memory is kept for reuse rather than handed back to the kernel and
    faulted in again; without this, a benchmark of many MiB-sized temporaries runs up to
    4x slower as the first of a process than after another one.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)


def _release_free_heap():
    """Hand the C heap's free pages back to the kernel (glibc ``malloc_trim``), so that the
    next call's peak RSS counts the pages it touches, not ones freed by earlier calls."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def synchronize(device):
    """Wait for the work queued on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_once(fn, device):
    """Run ``fn()`` once; return (seconds, peak extra bytes, its result).

    Peak extra memory is the CUDA allocator's peak above the memory in use before the call
    on a GPU, and the growth of the process's peak RSS on the CPU (Linux only), with the
    C heap's free pages released before.
    """
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _release_free_heap()
        before = _rss_bytes("VmRSS")
        _reset_peak_rss()
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_bytes("VmHWM")
    return seconds, peak - before, result


def images_per_second(fn, images_per_call, device, calls):
    """Images per second of ``calls`` calls of ``fn`` (each of ``images_per_call`` images)
    after one warm-up call."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return images_per_call * calls / (time.perf_counter() - start)


def measure(fn, device, repeat=3):
    """Run ``fn()`` ``repeat`` times; return (best seconds, peak extra bytes of one call,
    as ``measure_once`` reads it).

    The C allocator's thresholds are fixed before anything runs (see
    ``_settle_allocator``): results do not depend on what ran before.
    """
    _settle_allocator()
    fn()  # warm-up: lazy initialisation, allocator caches
    best = float("inf")
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    _, peak, _ = measure_once(fn, device)
    return best, peak


def _digits(value):
    """Three significant digits, without exponent for large values: 0.0123, 12.3, 1234."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def cost(seconds, peak_bytes=None):
    """A time (and peak extra memory) as text: "83.1 ms / 12.5 MiB"."""
    text = f"{_digits(seconds * 1e3)} ms" if seconds < 1 else f"{_digits(seconds)} s"
    return text if peak_bytes is None else f"{text} / {_digits(peak_bytes / 2**20)} MiB"


def ratio(baseline, ours):
    """``baseline / ours`` as text ("12.3x"), "-" when either is unknown or ours is not positive."""
    if baseline is None or ours is None or ours <= 0:
        return "-"
    return f"{_digits(baseline / ours)}x"


def comparison_row(component, device, size, baseline, ours, check):
    """One row of the combined table; ``baseline`` and ``ours`` are (seconds, peak bytes)."""
    return {"component": component, "device": device.type, "input": size,
            "baseline": cost(*baseline), "ours": cost(*ours),
            "time ratio": ratio(baseline[0], ours[0]), "memory ratio": ratio(baseline[1], ours[1]),
            "check": check}


def worker_counts():
    """1, 2, 4, ... worker processes, up to and including the CPUs this process may use."""
    usable = usable_cpus()
    counts = [1 << k for k in range(usable.bit_length()) if 1 << k < usable]
    return counts + [usable]


def scaling_rows(component, size, items, seconds, check):
    """Rows of a throughput against worker processes: ``seconds`` maps each worker count to
    the time taken for ``items`` items; every count after the first is set against the first."""
    (first, first_seconds), *others = seconds.items()

    def rate(count, took):
        return f"{count} {'process' if count == 1 else 'processes'}: {cost(took)}, {items / took:.3g} img/s"
    return [{"component": component, "device": "cpu", "input": size, "baseline": rate(first, first_seconds),
             "ours": rate(count, took), "time ratio": ratio(first_seconds, took), "memory ratio": "-",
             "check": check} for count, took in others]


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
