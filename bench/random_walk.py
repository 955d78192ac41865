"""Random walk: sparse products (ours) against the dense matrix power (docs/method.md §10).

``python -m bench.random_walk`` prints one row per case: the dense ``N x N`` formulation
of the original code (``T`` squared ``log2 t`` times, then ``v T^t``) and
``tools.random_walk`` on the same inputs, with wall time, peak memory and the largest
difference between the two results.  The 125x94 dense case (N = 11750, ~550 MB per
matrix, minutes of CPU) is by default *estimated*: ``A`` and ``T`` are built for real and
one squaring is timed; the estimate is build + ``log2 t`` squarings and its memory is
that of one squaring (the peak of the full run too).  Peak memory is the growth of the
process's peak RSS on the CPU (Linux only) or the CUDA allocator's peak.
"""
import argparse
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F

from bench.measure import cost, measure_once, ratio
from tools import flags
from tools.random_walk import (directions, pairs_within_radius, path_max_affinity,
                               propagate_with_boundary, random_walk)

RADIUS = 5
CASES = (
    {"name": "125x94x3 IRN beta10 t256", "size": (125, 94), "channels": 3, "beta": 10,
     "t": 256, "arch": "irn", "large": True},
    {"name": "56x56x21 AffinityNet beta8 t256", "size": (56, 56), "channels": 21, "beta": 8,
     "t": 256, "arch": "affinitynet", "large": False},
)


def _inputs(case, device):
    """Seeded CAM ``[C, h, w]`` and guide: a boundary map (IRN) or pair affinities."""
    generator = torch.Generator().manual_seed(0)
    h, w = case["size"]
    cam = torch.rand(case["channels"], h, w, generator=generator)
    if case["arch"] == "irn":
        guide = torch.rand(h, w, generator=generator) ** 3
    else:
        _, index_to = pairs_within_radius(RADIUS, (h, w))
        guide = 1 - torch.rand(index_to.shape, generator=generator)
    return cam.to(device), guide.to(device)


def _ours(case, cam, guide):
    """``tools.random_walk`` on one case; returns ``[C, h*w]``."""
    if case["arch"] == "irn":
        out = propagate_with_boundary(cam, guide, RADIUS, case["beta"], case["t"])
        return out.reshape(cam.shape[0], -1)
    return random_walk(cam.reshape(cam.shape[0], -1), guide, case["size"], RADIUS,
                       case["beta"], case["t"])


def _irn_pairs(boundary):
    """IRN's graph on the unpadded map: every pixel a source, pairs with both ends inside."""
    h, w = boundary.shape
    reach = RADIUS - 1
    affinity = path_max_affinity(F.pad(boundary, (reach, reach, 0, reach), value=1.0), RADIUS)
    index_from = torch.arange(h * w, device=boundary.device)
    offsets = torch.tensor(directions(RADIUS), device=boundary.device)
    ty = (index_from // w)[None] + offsets[:, :1]
    tx = (index_from % w)[None] + offsets[:, 1:]
    inside = (ty < h) & (tx >= 0) & (tx < w)
    return index_from.expand_as(ty)[inside], (ty * w + tx)[inside], affinity[inside]


def _dense_transition(case, guide):
    """The original dense ``T [N, N]``: ``A^beta`` with ones on the diagonal, columns normalised."""
    h, w = case["size"]
    if case["arch"] == "irn":
        sources, targets, affinity = _irn_pairs(guide)
    else:
        index_from, targets = pairs_within_radius(RADIUS, (h, w), guide.device)
        sources, affinity = index_from.expand_as(targets), guide
    dense = torch.eye(h * w, device=guide.device)
    dense[sources, targets] = affinity
    dense[targets, sources] = affinity
    dense = dense.pow(case["beta"])
    return dense / dense.sum(dim=0, keepdim=True)


def _dense(case, cam, guide, squarings):
    """Dense walk with ``squarings`` squarings of ``T``; ``v T^t`` when they reach ``t``."""
    transition = _dense_transition(case, guide)
    for _ in range(squarings):
        transition = transition @ transition
    if 2 ** squarings == case["t"]:
        return cam.reshape(cam.shape[0], -1) @ transition
    return None


def _method(case, squarings, device):
    """A callable running ours (``squarings`` None) or the dense form on seeded inputs."""
    cam, guide = _inputs(case, device)
    if squarings is None:
        return lambda: _ours(case, cam, guide)
    return lambda: _dense(case, cam, guide, squarings)


def _child(case_index, squarings, device, repeat, threads):
    """One method on one case, run in a fresh process so that memory readings are clean.

    The process uses the caller's ``threads`` (torch's thread count is per process).
    The method first runs on a 12x12 map, so that library code paged in on first use
    does not count as memory.  Then the first run on the case is cold and gives the
    memory; the time is the fastest of ``repeat`` warm runs after it (the cold run's
    when ``repeat`` is 0).  Returns (seconds, MB, result on the CPU or None).
    """
    torch.set_num_threads(threads)
    case = CASES[case_index]
    with torch.no_grad():
        _method(dict(case, size=(12, 12)), squarings, device)()
        fn = _method(case, squarings, device)
        cold = measure_once(fn, torch.device(device))
        runs = [measure_once(fn, torch.device(device)) for _ in range(repeat)] or [cold]
    seconds, _, result = min(runs, key=lambda r: r[0])
    return seconds, cold[1] / 2**20, None if result is None else result.cpu()


def _isolated(context, *args):
    """``_child(*args)`` in a new process started by ``context``, with our thread count."""
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        return executor.submit(_child, *args, torch.get_num_threads()).result()


def _run_case(case_index, device, dense_large, repeat):
    """One row of the table (see ``run``)."""
    case = CASES[case_index]
    spawn = multiprocessing.get_context("spawn")
    ours_s, ours_mb, ours_out = _isolated(spawn, case_index, None, device, repeat)
    row = {"case": case["name"], "n": case["size"][0] * case["size"][1],
           "ours_s": ours_s, "ours_peak_mb": ours_mb, "dense_s": None,
           "dense_peak_mb": None, "dense": "skipped", "speedup": None, "max_rel_diff": None}
    if case["large"] and dense_large == "skip":
        return row
    squarings = int(math.log2(case["t"]))
    estimate = case["large"] and dense_large == "estimate"
    if estimate:
        build_s, _, _ = _isolated(spawn, case_index, 0, device, 0)
        step_s, dense_mb, _ = _isolated(spawn, case_index, 1, device, 0)
        dense_s = build_s + squarings * (step_s - build_s)
    else:
        dense_s, dense_mb, dense_out = _isolated(spawn, case_index, squarings, device, 0)
        scale = dense_out.abs().max()
        row["max_rel_diff"] = float((ours_out - dense_out).abs().max() / scale)
    row.update(dense_s=dense_s, dense_peak_mb=dense_mb, speedup=dense_s / ours_s,
               dense="estimated" if estimate else "measured")
    return row


def run(device="cpu", dense_large="estimate", repeat=3):
    """Benchmark every case; returns one dict per case.

    ``dense_large``: ``"estimate"`` (default), ``"full"`` (minutes) or ``"skip"`` for the
    dense form of the large case.  Each measurement runs in a fresh process (see
    ``_child``): ours once cold (its memory), then ``repeat`` times warm (the fastest
    time).  Keys: case, n, ours_s, ours_peak_mb, dense_s, dense_peak_mb, dense
    ("measured", "estimated" or "skipped"), speedup, max_rel_diff (largest
    |ours - dense| over the largest |dense|; None unless dense was measured).
    Uses the calling process's torch thread count.
    """
    return [_run_case(index, device, dense_large, repeat) for index in range(len(CASES))]


def _in_bytes(megabytes):
    """MB (2**20 bytes) as bytes; None stays None."""
    return None if megabytes is None else megabytes * 2**20


def combined_row(row, device):
    """A row of ``run`` in the columns of ``bench.measure.COLUMNS`` (``python -m bench``)."""
    dense = None if row["dense_s"] is None else cost(row["dense_s"], _in_bytes(row["dense_peak_mb"]))
    if row["max_rel_diff"] is not None:
        check = f"max rel diff {row['max_rel_diff']:.1e}"
    else:
        check = f"dense {row['dense']}, not compared"
    return {"component": "random walk", "device": torch.device(device).type,
            "input": f"{row['case']}, N={row['n']}",
            "baseline": "-" if dense is None else f"{dense} ({row['dense']})",
            "ours": cost(row["ours_s"], _in_bytes(row["ours_peak_mb"])),
            "time ratio": ratio(row["dense_s"], row["ours_s"]),
            "memory ratio": ratio(row["dense_peak_mb"], row["ours_peak_mb"]), "check": check}


def _fmt(value, spec):
    """``value`` formatted with ``spec``, or "-" for None."""
    return "-" if value is None else format(value, spec)


def format_table(rows):
    """The rows of ``run`` as a Markdown table."""
    lines = ["| case | N | dense s | dense peak MB | dense | ours s | ours peak MB | speedup x "
             "| max rel diff |", "|" + " --- |" * 9]
    for r in rows:
        lines.append(f"| {r['case']} | {r['n']} | {_fmt(r['dense_s'], '.2f')} | "
                     f"{_fmt(r['dense_peak_mb'], '.0f')} | {r['dense']} | "
                     f"{_fmt(r['ours_s'], '.3f')} | {_fmt(r['ours_peak_mb'], '.1f')} | "
                     f"{_fmt(r['speedup'], '.0f')} | {_fmt(r['max_rel_diff'], '.1e')} |")
    return "\n".join(lines)


def main():
    """Command line: print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=flags.device, default="cpu", help="torch device to run on")
    parser.add_argument("--dense-large", choices=("estimate", "full", "skip"), default="estimate",
                        help="dense form of the 125x94 case: estimated from one squaring "
                             "(default), run in full (minutes, ~1.7 GB), or skipped")
    parser.add_argument("--skip-dense-large", dest="dense_large", action="store_const",
                        const="skip", help="same as --dense-large skip")
    parser.add_argument("--repeat", type=flags.positive_int, default=3,
                        help="runs of ours per case; the fastest is reported")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"load average {os.getloadavg()[0]:.2f}")
    table = format_table(run(args.device, args.dense_large, args.repeat))
    print(table)
    print(f"load average after: {os.getloadavg()[0]:.2f} (other processes slow the CPU "
          "timings, the sparse walk's 256 short parallel steps most)")


if __name__ == "__main__":
    main()
