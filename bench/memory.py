"""Peak memory of make_cam's work on one image against the image's side (docs/limits.md).

``python -m bench.memory [SIDE ...]`` runs, for each side (default 500, 1000, 2000, 4000 px;
4:3 images), make_cam's path for one image in a fresh process on the CPU: the scales
1.0, 0.5, 1.5, 2.0 of the image as ``data.datasets.InferenceDataset`` makes them (capped at
``data.transforms.LARGEST_CAM_SIDE``), an AE-SIPE ResNet-50 of 21 classes (random weights:
memory does not depend on them) with three of the classes as the image's labels, and the
CAM file written.  Each row gives the process's peak resident memory (``ru_maxrss``, the
interpreter and torch included), the same for a process that only imports and builds the
network, the side actually seen, and the size the HW x HW similarity of the structure
seeds would have at scale 2 made whole (``net.sipe.SIMILARITY_BLOCK`` bounds each block).
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDES = (500, 1000, 2000, 4000)
SCALES = (1.0, 0.5, 1.5, 2.0)
COLUMNS = ("side", "seen at", "peak RSS", "network alone", "dense similarity at scale 2", "seconds")


def one(side, build_only):
    """make_cam's work on one random 4:3 image of longer side ``side``; prints a JSON line."""
    import numpy as np
    import torch

    from data.transforms import LARGEST_CAM_SIDE, capped_scales, scaled_images
    from net.sipe import build_classifier, inference_maps
    from tools.cam_files import save_cam

    torch.manual_seed(0)
    model = build_classifier(21, "ae_sipe", pretrained="none", backbone="resnet50", frozen=False).eval()
    started = time.perf_counter()
    size = (side * 3 // 4, side)
    scales = capped_scales(size, SCALES, LARGEST_CAM_SIDE)
    if not build_only:
        image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
        keys = torch.tensor([0, 3, 8, 15])
        maps = inference_maps(model, scaled_images(image, scales), keys, size)
        with tempfile.TemporaryDirectory() as folder:
            save_cam(Path(folder) / "image.npy", keys.numpy(), maps["cam"].numpy(), method="ae_sipe", num_classes=21)
    seen = round(max(size) * scales[0] / SCALES[0])
    print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "seen": seen,
                      "seconds": time.perf_counter() - started}))


def measure(side, build_only=False):
    """The JSON line of ``one`` in a fresh process."""
    command = [sys.executable, "-m", "bench.memory", "--one", str(side)] + (["--build-only"] if build_only else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(sides=SIDES):
    rows = []
    alone = measure(sides[0], build_only=True)["peak_kib"]
    for side in sides:
        result = measure(side)
        features = (result["seen"] * 2 * 3 // 4 // 16) * (result["seen"] * 2 // 16)  # stride 16 at scale 2
        rows.append({"side": f"{side * 3 // 4} x {side}", "seen at": f"{result['seen']} px",
                     "peak RSS": f"{result['peak_kib'] / 2**20:.2f} GiB",
                     "network alone": f"{alone / 2**20:.2f} GiB",
                     "dense similarity at scale 2": f"{features ** 2 * 4 / 2**30:.2f} GiB",
                     "seconds": f"{result['seconds']:.1f}"})
    return rows


def table(rows):
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in COLUMNS}
    lines = [" | ".join(column.ljust(widths[column]) for column in COLUMNS)]
    lines += [" | ".join(row[column].ljust(widths[column]) for column in COLUMNS) for row in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("sides", nargs="*", type=int, default=SIDES, metavar="SIDE")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        one(args.one, args.build_only)
    else:
        print(table(run(tuple(args.sides))))


if __name__ == "__main__":
    main()
