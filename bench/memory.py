"""Peak memory against the image's side (docs/limits.md): make_cam's work on one image, and
the parts of the later stages that a larger image makes larger.

``python -m bench.memory [SIDE ...]`` runs each case for each side (default 500, 1000, 2000,
4000 px; 4:3 images) in a fresh process on the CPU and prints the process's peak resident
memory (``ru_maxrss``: the interpreter and torch included; ``baseline`` is a process that
only imports them), with the size the case works at and its seconds:

- ``make_cam``: the scales 1.0, 0.5, 1.5, 2.0 of the image as ``data.datasets.InferenceDataset``
  makes them (capped at ``data.transforms.LARGEST_CAM_SIDE``), an AE-SIPE ResNet-50 of 21
  classes (random weights: memory does not depend on them) with three classes as the image's
  labels, and the CAM file written; the size the HW x HW similarity of the structure seeds
  would have at scale 2 made whole is given beside it (``net.sipe.SIMILARITY_BLOCK`` bounds
  each block);
- ``crf``: the label CRF of the affinity labels (``tools.crf.crf_labels``, 4 labels) at the
  image's full size;
- ``walk``: IRN's random walk (``tools.random_walk.propagate_with_boundary``, 4 maps) on the
  stride-4 map of the image, 8 steps instead of 256 (memory does not depend on them).
"""
import argparse
import importlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDES = (500, 1000, 2000, 4000)
SCALES = (1.0, 0.5, 1.5, 2.0)
CASES = ("make_cam", "crf", "walk")
COLUMNS = ("case", "image", "works at", "peak RSS", "baseline", "note", "seconds")


def make_cam(size):
    """make_cam's work on one image of ``size``; (the side it is seen at, a note)."""
    import numpy as np
    import torch

    from data.transforms import LARGEST_CAM_SIDE, capped_scales, scaled_images
    from net.sipe import build_classifier, inference_maps
    from tools.cam_files import save_cam

    torch.manual_seed(0)
    model = build_classifier(21, "ae_sipe", pretrained="none", backbone="resnet50", frozen=False).eval()
    scales = capped_scales(size, SCALES, LARGEST_CAM_SIDE)
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    keys = torch.tensor([0, 3, 8, 15])
    maps = inference_maps(model, scaled_images(image, scales), keys, size)
    with tempfile.TemporaryDirectory() as folder:
        save_cam(Path(folder) / "image.npy", keys.numpy(), maps["cam"].numpy(), method="ae_sipe", num_classes=21)
    seen = round(max(size) * scales[0])
    pixels = (seen * 2 * size[0] // max(size) // 16) * (seen * 2 // 16)  # stride 16 at scale 2
    return f"{seen} px", f"whole similarity at scale 2: {pixels ** 2 * 4 / 2**30:.2f} GiB"


def crf(size):
    import numpy as np

    from tools.crf import crf_labels

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(4), -(-size[1] // 4))[None, :size[1]].repeat(size[0], 0)
    crf_labels(image, labels, 4)
    return f"{size[1]} px", "4 labels, 10 iterations"


def walk(size):
    import torch

    from tools.random_walk import propagate_with_boundary

    small = (size[0] // 4, size[1] // 4)
    gen = torch.Generator().manual_seed(0)
    propagate_with_boundary(torch.rand(4, *small, generator=gen), torch.rand(*small, generator=gen), t=8)
    return f"{small[1]} px", "stride 4, 4 maps, 8 steps"


def one(case, side):
    """Case ``case`` (None: imports only) on a 4:3 image of longer side ``side``; prints a JSON line."""
    importlib.import_module("torch")  # the baseline (no case) holds torch too

    started = time.perf_counter()
    works_at, note = {"make_cam": make_cam, "crf": crf, "walk": walk}[case]((side * 3 // 4, side)) if case else ("", "")
    print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "works_at": works_at,
                      "note": note, "seconds": time.perf_counter() - started}))


def measure(case, side):
    """The JSON line of ``one`` in a fresh process."""
    command = [sys.executable, "-m", "bench.memory", "--one", case or "", str(side)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(sides=SIDES, cases=CASES):
    rows = []
    baseline = f"{measure(None, sides[0])['peak_kib'] / 2**20:.2f} GiB"
    for case in cases:
        for side in sides:
            result = measure(case, side)
            rows.append({"case": case, "image": f"{side * 3 // 4} x {side}", "works at": result["works_at"],
                         "peak RSS": f"{result['peak_kib'] / 2**20:.2f} GiB", "baseline": baseline,
                         "note": result["note"], "seconds": f"{result['seconds']:.1f}"})
    return rows


def table(rows):
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in COLUMNS}
    lines = [" | ".join(column.ljust(widths[column]) for column in COLUMNS)]
    lines += [" | ".join(row[column].ljust(widths[column]) for column in COLUMNS) for row in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("sides", nargs="*", type=int, default=SIDES, metavar="SIDE")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES)
    parser.add_argument("--one", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        one(args.one[0] or None, int(args.one[1]))
    else:
        print(table(run(tuple(args.sides), tuple(args.cases))))


if __name__ == "__main__":
    main()
