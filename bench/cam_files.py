"""CAM file size and speed (tools/cam_files.py, docs/method.md §2): bytes per class channel and pixel of a
``--all-maps`` file (three maps) at VOC and COCO image sizes, as make_cam writes it (each
scale's map, fused on load), as the same maps fused and stored at the image size (uint8,
row differences, bzip2: what make_cam wrote before) and as format 1 (float16), with the time
to write a file and to read one map.

The maps are generated as make_cam's are: at each of the four inference scales a stride-16
activation of the same objects; the prototype maps have a background channel of their own
and AE-SIPE's refined map (``cam``) is sharper, a steep sigmoid of the same activation."""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.measure import table
from tools.cam_maps import ScaleMaps
from tools.cam_files import load_cam, save_cam

COLUMNS = ("image", "classes", "format", "bytes per class channel and pixel", "MB a file", "write ms", "read ms")
SIZES = {"VOC 500x375": (375, 500), "COCO 640x480": (480, 640)}
SCALES = (1.0, 0.5, 1.5, 2.0)
STRIDE = 16


def make_cam_like(height, width, classes, seed):
    """{map name: ScaleMaps} like make_cam --all-maps of one image."""
    gen = torch.Generator().manual_seed(seed)
    objects = torch.rand(1, classes, -(-height // 8), -(-width // 8), generator=gen) * 4 - 2.5
    objects = F.avg_pool2d(objects, 5, 1, 2, count_include_pad=False)  # objects of a few stride-16 cells
    maps = {"plain_cam": [], "is_cam": [], "cam": []}
    for scale in SCALES:
        grid = (-(-round(height * scale) // STRIDE), -(-round(width * scale) // STRIDE))
        fg = F.relu(F.interpolate(objects, grid, mode="area" if scale < 2 else "bilinear")[0])
        fg = fg + 0.05 * torch.rand(fg.shape, generator=gen) * (fg > 0)
        fg = fg / fg.amax(dim=(1, 2), keepdim=True).clamp_min(1e-5)
        # the prototype maps are cosines: above zero nearly everywhere, as on real images
        cosine = (0.2 + 0.6 * fg + 0.2 * torch.rand(fg.shape, generator=gen)).clamp(max=1)
        sharp = torch.sigmoid(12 * (cosine - 0.5))
        maps["plain_cam"].append(fg)
        maps["is_cam"].append(torch.cat([1 - cosine.amax(dim=0, keepdim=True) / 2, cosine]))
        maps["cam"].append(torch.cat([1 - sharp.amax(dim=0, keepdim=True), sharp]))
    return {name: ScaleMaps(scales, (height, width), background=name == "plain_cam") for name, scales in maps.items()}


def file_bytes(maps, fused, float16=False):
    """The size of one CAM file of ``maps``: as make_cam writes it, fused to the image size
    (``fused``: uint8 + bzip2), or as format 1 (float16 arrays in the pickled dict)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.npy"
        if float16:
            record = {"keys": np.arange(len(maps["cam"].fused())),
                      **{name: value.fused().numpy().astype(np.float16) for name, value in maps.items()}}
            np.save(path, record, allow_pickle=True)
        else:
            maps = {name: value.fused().numpy() for name, value in maps.items()} if fused else dict(maps)
            save_cam(path, np.arange(len(maps["is_cam"])), maps.pop("cam"), **maps)
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
            values = (classes + 1) * height * width  # the file holds three maps: 6 bytes in float16
            sample = make_cam_like(height, width, classes, 0)
            for name, size, write, read in (
                    ("2, scales (make_cam's)", np.mean(sizes), f"{1e3 * np.median(writes):.1f}",
                     f"{1e3 * np.median(reads):.1f}"),
                    ("2, fused, uint8 + bzip2", file_bytes(sample, fused=True), "-", "-"),
                    ("1 (float16)", file_bytes(sample, fused=True, float16=True), "-", "-")):
                rows.append({"image": label, "classes": classes, "format": name,
                             "bytes per class channel and pixel": f"{size / values:.3f}",
                             "MB a file": f"{size / 1e6:.3f}", "write ms": write, "read ms": read})
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    print(table(run(parser.parse_args().repeats), COLUMNS))
