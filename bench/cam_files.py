"""CAM file size and speed (tools/io.py, SPEC 2): bytes per class channel and pixel of a
``--all-maps`` file (three maps) at VOC and COCO image sizes, in this format (uint8, row
differences, bzip2) and in format 1 (float16), with the time to write and to read one map.

The maps are generated as make_cam's are: a stride-16 activation upsampled bilinearly to
the image and max-normalised, the background one minus the foreground maximum; PAMR's
refined map (AE-SIPE's ``cam``) is sharper, as a steep sigmoid of the same map."""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.measure import table
from tools.io import load_cam, save_cam

COLUMNS = ("image", "classes", "format", "bytes per class channel and pixel", "MB a file", "write ms", "read ms")
SIZES = {"VOC 500x375": (375, 500), "COCO 640x480": (480, 640)}


def make_cam_like(height, width, classes, seed):
    """{map name: float32 [classes + 1, H, W]} like make_cam --all-maps of one image."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(1, classes, -(-height // 16), -(-width // 16), generator=gen) * 4 - 2.5
    low = F.avg_pool2d(low, 3, 1, 1, count_include_pad=False)  # objects of a few cells
    fg = F.interpolate(F.relu(low), (height, width), mode="bilinear", align_corners=False)[0]

    def with_background(maps):
        maps = maps / maps.amax(dim=(1, 2), keepdim=True).clamp_min(1e-5)
        return torch.cat([1 - maps.amax(dim=0, keepdim=True), maps]).numpy()

    return {"plain_cam": with_background(fg), "is_cam": with_background(fg ** 0.7),
            "cam": with_background(torch.sigmoid(12 * (fg / fg.max() - 0.3)))}


def format1_bytes(maps):
    """The size of the same maps as format 1 stored them (float16 arrays in the pickled dict)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v1.npy"
        record = {"keys": np.arange(len(maps["cam"])), **{k: v.astype(np.float16) for k, v in maps.items()}}
        np.save(path, record, allow_pickle=True)
        return path.stat().st_size


def run(repeats=5):
    rows = []
    for label, (height, width) in SIZES.items():
        for classes in (1, 3):
            sizes, writes, reads = [], [], []
            with tempfile.TemporaryDirectory() as folder:
                for seed in range(repeats):
                    maps = make_cam_like(height, width, classes, seed)
                    path = Path(folder) / f"{seed}.npy"
                    started = time.perf_counter()
                    save_cam(path, np.arange(classes + 1), maps.pop("cam"), **maps)
                    writes.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    load_cam(path, "cam")
                    reads.append(time.perf_counter() - started)
                    sizes.append(path.stat().st_size)
                old = format1_bytes(make_cam_like(height, width, classes, 0))
            values = (classes + 1) * height * width
            rows.append({"image": label, "classes": classes, "format": "2 (uint8, bzip2)",
                         "bytes per class channel and pixel": f"{np.mean(sizes) / values:.3f}",
                         "MB a file": f"{np.mean(sizes) / 1e6:.2f}", "write ms": f"{1e3 * np.median(writes):.0f}",
                         "read ms": f"{1e3 * np.median(reads):.0f}"})
            rows.append({"image": label, "classes": classes, "format": "1 (float16)",
                         "bytes per class channel and pixel": f"{old / values:.3f}", "MB a file": f"{old / 1e6:.2f}",
                         "write ms": "-", "read ms": "-"})
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    print(table(run(parser.parse_args().repeats), COLUMNS))
