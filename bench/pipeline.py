"""Every stage of the VOC route, timed on generated VOC-size images, and the projected
hours of a VOC and a COCO run (``python -m bench pipeline``).

The stage scripts run in this process, in the drivers' order (AE-SIPE and IRN, as
``run_voc.sh``), with their published settings on the device they find: crop 512 and
batch 16 / 32 / 10, make_cam's scales 1.0 0.5 1.5 2.0, the CRFs on every usable CPU (--cpu-workers).
The backbones start from generated torchvision weights files (random values), so that
the frozen stages and BatchNorm statistics are those of a run from ImageNet weights; the
training stages run at lr 1e-6, as random weights diverge at the published rates.

Each stage's rate is taken from its progress bar: the items (images, or training steps
times the batch) after the first ``WARMUP`` ones, over the time from then to the stage's
end, which waits for the device; start-up (model building, loader workers, the warm-up
items) is shown apart.  The projection multiplies the per-image time by the images of a full run: VOC
train_aug (10,582; eval on train, 1,464, and val, 1,449) and COCO train (82,783; val
40,504), with the published epochs (stage 1: 5; IRN: 3) and iterations (stage 7: 20,000 on
VOC, 100,000 on COCO, batch 10).  COCO's images (640x480) have 1.64 times the pixels of
VOC's, and its per-image inference and CRF times are scaled by that; COCO's route is
SIPE without an affinity network (``run_coco.sh``), timed here by AE-SIPE's rates (an
upper bound: PAMR is AE-SIPE's only extra work).  The CPU-pool stages (eval_cam, the
stage-4 CRF) are also projected for 16 CPUs, assuming they scale with the processes.
"""
import argparse
import contextlib
import importlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from bench.measure import table
from data.toy import generate
from engine import stage
from tools import flags
from tools.dist import usable_cpus

WARMUP = 2
# Images of each route's splits, its evaluations (VOC: IS-CAM and AE-IS-CAM; the affinity
# labels, the walk and the walk + CRF on train. COCO: IS-CAM; its pseudo-labels) and stage 7.
RUN = {"voc": {"train": 10582, "eval": 1464, "val": 1449, "map_evals": 2, "label_evals": 3,
               "train_seg_iterations": 20000, "pixels": 1.0},
       "coco": {"train": 82783, "eval": 82783, "val": 40504, "map_evals": 1, "label_evals": 1,
                "train_seg_iterations": 100000, "pixels": 640 * 480 / (500 * 375)}}
CPU_POOL_STAGES = ("eval_cam", "make_affinity_labels")
COLUMNS = ("stage", "device", "images timed", "start-up + warm-up", "img/s", "VOC projected", "COCO projected",
           "VOC with 16 CPUs", "COCO with 16 CPUs")


stage_progress = stage.progress  # the stages' own, which ProgressClock wraps


class ProgressClock:
    """Wraps ``stage.progress``: the time at which each bar counted each item."""

    def __init__(self):
        self.marks = []  # (perf_counter, items done so far)

    def progress(self, iterable, is_main=True, **kwargs):
        return TimedBar(stage_progress(iterable, is_main, **kwargs), self.marks)


class TimedBar:
    """A tqdm bar that records (time, items done) at each ``update`` and after each item it
    yields, when the stage comes back for the next one."""

    def __init__(self, bar, marks):
        self.bar, self.marks, self.done = bar, marks, 0

    def __getattr__(self, name):
        return getattr(self.bar, name)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def _mark(self, n):
        self.done += n
        self.marks.append((time.perf_counter(), self.done))

    def update(self, n=1):
        self.bar.update(n)
        self._mark(n)

    def __iter__(self):
        for item in self.bar:
            yield item  # the mark comes when the stage asks for the next item: this one is done
            self._mark(1)


def weights_file(folder, backbone):
    """A torchvision state dict of random weights for ``backbone`` whose BatchNorm statistics
    are those of its own activations on noise images (as a trained network's are of its
    data): the frozen parts of a run from ImageNet weights, without the download, and
    without the blow-up of unit statistics over random convolutions."""
    path = Path(folder) / f"{backbone}.pth"
    if not path.exists():
        torch.manual_seed(0)
        model = getattr(torchvision.models, backbone)(weights=None).train()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # cumulative averages over the calibration batches
        with torch.no_grad():
            for _ in range(4):
                model(torch.randn(8, 3, 128, 128))
        torch.save(model.state_dict(), path)
    return path


def run_stage(name, argv):
    """Run stage script ``name`` in this process; return (start-up seconds, items timed,
    seconds for them)."""
    clock = ProgressClock()
    module = importlib.import_module(name)
    start = time.perf_counter()
    stage.progress = clock.progress
    try:
        with contextlib.redirect_stdout(sys.stderr):  # eval_cam's report: the table is this bench's output
            module.main(argv)
    finally:
        stage.progress = stage_progress
    end = time.perf_counter()
    if len(clock.marks) <= WARMUP:
        raise RuntimeError(f"{name} counted {len(clock.marks)} items: time it on more than {WARMUP}")
    since, counted = clock.marks[WARMUP - 1]
    return since - start, clock.marks[-1][1] - counted, end - since


def saved_flags(work_dir, name):
    """The flags a stage ran with, as it saved them (``args/<name>.json``)."""
    return json.loads((Path(work_dir) / "args" / f"{name}.json").read_text())


def plan(root, work, weights, options, cpu_workers):
    """(stage, argv, images of a full run per route: {route: function of RUN[route]},
    per-pixel stage) in the drivers' order, with the options' sizes."""
    data = ["--dataset", "custom", "--data-root", str(root), "--work-dir", str(work)]
    train = [*data, "--split", "train"]
    sizes = ["--lr", "1e-6"]  # random weights diverge at the published rates; the time does not depend on it
    if options.batch_size:
        sizes += ["--batch-size", str(options.batch_size)]
    if options.crop_size:
        sizes += ["--crop-size", str(options.crop_size)]
    per_epoch = lambda batch: max(1, options.images // (options.batch_size or batch))  # noqa: E731
    epochs = lambda batch: str(math.ceil((options.steps + WARMUP) / per_epoch(batch)))  # noqa: E731
    evaluate = [*train, "--score-workers", str(cpu_workers)]
    return [
        ("train_cam", [*train, "--method", "ae_sipe", "--pretrained", str(weights["resnet50"]), *sizes,
                       "--epochs", epochs(16)], lambda run: 5 * run["train"], False),
        ("make_cam", [*train, "--all-maps"], lambda run: run["train"], True),
        ("eval_cam", [*evaluate, "--map", "plain_cam", "--sweep", "--tag", "CAM"],
         lambda run: run["eval"], True),
        ("eval_cam", [*evaluate, "--map", "is_cam", "--tag", "IS-CAM"],
         lambda run: run["map_evals"] * run["eval"], True),
        ("make_affinity_labels", [*train, "--crf-workers", str(cpu_workers)], lambda run: run["train"], True),
        ("eval_cam", [*evaluate, "--label-dir", str(work / "affinity_labels"), "--confident",
                      "--tag", "affinity labels"],
         lambda run: run["label_evals"] * run["eval"] + 2 * run["val"], True),
        ("train_affinity", [*train, "--arch", "irn", "--pretrained", str(weights["resnet50"]), *sizes,
                            "--epochs", epochs(32)], lambda run: 3 * run["train"], False),
        ("make_seg_labels", [*train, "--crf", "--crf-workers", str(cpu_workers)], lambda run: run["train"], True),
        ("train_seg", [*train, "--label-dir", str(work / "pseudo_labels"), "--pretrained",
                       str(weights["resnet101"]), *sizes, "--iterations", str(options.steps + WARMUP)],
         lambda run: run["train_seg_iterations"] * 10, False),
        ("infer_seg", [*data, "--split", "val", "--crf", "--crf-workers", str(cpu_workers)],
         lambda run: run["val"], True),
    ]


def hours(seconds):
    return f"{seconds / 3600:.2f} h"


def run(options=None):
    """One row per stage call and a total row, as in the module's docstring."""
    options = options or parse_args([])
    cpu_workers = usable_cpus() if options.cpu_workers is None else options.cpu_workers
    rows, totals = [], {key: 0.0 for key in COLUMNS[5:]}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        root = generate(folder / "data", num_train=options.images, num_val=max(WARMUP + 2, options.images // 4),
                        size=tuple(options.image_size), seed=0)
        weights = {name: weights_file(folder, name) for name in ("resnet50", "resnet101")}
        device = "cuda" if torch.cuda.is_available() else "cpu"
        for name, argv, full_images, per_pixel in plan(root, folder / "run", weights, options, cpu_workers):
            startup, items, seconds = run_stage(name, argv)
            saved = saved_flags(folder / "run", name)
            batch = saved.get("batch_size", 1) if name.startswith("train_") else 1
            rate = items * batch / seconds
            row = {"stage": name, "device": "cpu" if name in CPU_POOL_STAGES else device,
                   "images timed": items * batch, "start-up + warm-up": f"{startup:.1f} s", "img/s": f"{rate:.3g}"}
            for route in RUN:
                scale = RUN[route]["pixels"] if per_pixel else 1.0
                projected = full_images(RUN[route]) * scale / rate
                faster = 16 / max(1, cpu_workers) if name in CPU_POOL_STAGES else 1.0
                row[f"{route.upper()} projected"] = hours(projected)
                row[f"{route.upper()} with 16 CPUs"] = hours(projected / faster)
                if route == "coco" and name in ("train_affinity", "make_seg_labels"):
                    row["COCO projected"] = row["COCO with 16 CPUs"] = "- (not in the COCO route)"
                    continue
                totals[f"{route.upper()} projected"] += projected
                totals[f"{route.upper()} with 16 CPUs"] += projected / faster
            rows.append(row)
    rows.append({"stage": "total", **{key: hours(value) for key, value in totals.items()}})
    return rows


# sizes of the timed run: GPU (the published batches) and CPU (a few minutes on 2 cores)
SIZES = {"cuda": {"images": 64, "steps": 8, "batch_size": None}, "cpu": {"images": 16, "steps": 2, "batch_size": 4}}


def parse_args(argv=None):
    sizes = SIZES["cuda" if torch.cuda.is_available() else "cpu"]
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=flags.positive_int, default=sizes["images"],
                        help="generated training images, a quarter as many for val (default: 64 with CUDA, 16 on "
                             "the CPU)")
    parser.add_argument("--image-size", type=flags.positive_int, nargs=2, default=(375, 500), metavar=("LO", "HI"),
                        help="range of each image side, in pixels (default VOC's 375-500)")
    parser.add_argument("--steps", type=flags.positive_int, default=sizes["steps"],
                        help=f"timed steps of each training stage, after {WARMUP} warm-up steps (default: 8 with "
                             "CUDA, 2 on the CPU)")
    parser.add_argument("--batch-size", type=flags.positive_int, default=sizes["batch_size"],
                        help="training batch of every training stage (default: the published ones with CUDA, 4 on "
                             "the CPU); the projection is per image")
    parser.add_argument("--crop-size", type=flags.positive_int, help="training crop (default: the published ones)")
    parser.add_argument("--cpu-workers", type=flags.non_negative_int,
                        help="processes of the CPU pools: scoring and the CRFs (default: the usable CPUs; 0: each "
                             "stage's own process, projected as one CPU)")
    return parser.parse_args(argv)


def main(argv=None):
    print(table(run(parse_args(argv)), COLUMNS))


if __name__ == "__main__":
    main()
