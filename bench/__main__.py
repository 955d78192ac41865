"""``python -m bench [NAME ...]``: run the benchmarks and print their tables.

NAME is any of structure_seeds, pamr, random_walk, confusion, crf, loading, throughput,
segmentation (default: all, in that order), and two that run only when named: pipeline
(every stage of the VOC route on generated VOC-size images, each stage's rate and the
projected hours of a VOC and a COCO run; bench/pipeline.py) and precision (how far
channels-last, BatchNorm folding, bf16 and fp16 move the inference stages' outputs, on
random networks; bench/precision.py takes a finished run's).  Each row of the first table
gives the component, the device, the input size, the baseline's and our time / peak extra
memory, their ratios and a check that both give the same result; the worker-process rows
(crf, loading) set each process count against one process.  The second table (throughput)
gives training and make_cam images per second, the third (segmentation) train_seg's and
infer_seg's.  GPU rows are added when CUDA is available.  Timings are only meaningful on
an otherwise idle machine: the load average is printed before and after.
"""
import argparse
import os

import torch

from bench import (confusion, crf, loading, pamr, pipeline, precision, random_walk, segmentation, structure_seeds,
                   throughput)
from bench.measure import COLUMNS, devices, table
from tools.dist import usable_cpus


def _random_walk_rows():
    """The random-walk cases (large dense case estimated) on every device, as combined rows."""
    return [random_walk.combined_row(row, device) for device in devices()
            for row in random_walk.run(device.type)]


# name: (rows, the columns of the table they go into)
BENCHMARKS = {"structure_seeds": (structure_seeds.run, COLUMNS), "pamr": (pamr.run, COLUMNS),
              "random_walk": (_random_walk_rows, COLUMNS), "confusion": (confusion.run, COLUMNS),
              "crf": (crf.run, COLUMNS), "loading": (loading.run, COLUMNS),
              "throughput": (throughput.run, throughput.COLUMNS),
              "segmentation": (segmentation.run, segmentation.COLUMNS),
              "pipeline": (pipeline.run, pipeline.COLUMNS), "precision": (precision.run, precision.COLUMNS)}
DEFAULT = [name for name in BENCHMARKS if name not in ("pipeline", "precision")]


def machine():
    """One line on the machine: CPUs, torch version and threads, GPU."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPUs ({usable_cpus()} usable), torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads, {gpu}")


def load():
    """The 1, 5 and 15-minute load averages as text."""
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv=None):
    """Run the named benchmarks (all by default) and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all but pipeline and precision)")
    names = parser.parse_args(argv).names or DEFAULT
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    print(machine())
    print(f"before: {load()}")
    tables = {}
    for name in names:
        run, columns = BENCHMARKS[name]
        tables.setdefault(columns, []).extend(run())
    print("\n\n".join(table(rows, columns) for columns, rows in tables.items()))
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
