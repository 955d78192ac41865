"""COCO train at full size, on a generated annotation file: time and peak memory
to load it, to list every image's labels, and to render the semantic masks (per image,
projected to the split, with the memory of each pool worker).

``python -m bench.coco_scale [--images 82783 --instances 604907] [--render 2000]
[--workers 0 1 2]``; workers 0 renders in the main process.  The annotation file has COCO train2014's numbers of images and
instances (about 7.3 an image, 1 % crowd), 80 categories with COCO's ids, polygons of 24
vertices (COCO's JSON averages about that); it is written to a temporary folder and removed.
Each measurement runs in a fresh process, so the peaks are its own.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from bench.measure import table
from data.sources import write_semantic_mask
from tools.workers import WorkerPool

COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
COLUMNS = ("step", "images", "workers", "seconds", "per image ms", "projected for the split", "peak MB (main)",
           "peak MB (a worker)", "KB a mask PNG")
REPO = Path(__file__).resolve().parents[1]


def generate(root, images, instances, seed=0):
    """``root/annotations/instances_train2014.json`` of ``images`` images and ``instances``
    annotations (no image files: nothing measured here reads them)."""
    rng = np.random.default_rng(seed)
    per_image = rng.multinomial(instances - images, np.full(images, 1.0 / images)) + 1  # at least one each
    records, annotations = [], []
    for number in range(1, images + 1):
        width, height = (640, int(rng.integers(360, 481))) if rng.random() < 0.7 else (int(rng.integers(360, 481)), 640)
        records.append({"id": number, "file_name": f"COCO_train2014_{number:012d}.jpg", "width": width,
                        "height": height})
        count = int(per_image[number - 1])
        centres = rng.random((count, 2)) * [width, height]
        radii = rng.uniform(10, 160, count)
        angles = np.sort(rng.random((count, 24)) * 2 * np.pi, axis=1)
        spread = rng.uniform(0.5, 1.0, (count, 24)) * radii[:, None]
        xs = np.clip(centres[:, :1] + spread * np.cos(angles), 0, width - 1).round(2)
        ys = np.clip(centres[:, 1:] + spread * np.sin(angles), 0, height - 1).round(2)
        for k in range(count):
            polygon = np.stack([xs[k], ys[k]], axis=1).ravel().tolist()
            x0, y0 = float(xs[k].min()), float(ys[k].min())
            annotations.append({"id": len(annotations) + 1, "image_id": number,
                                "category_id": int(rng.choice(COCO_CATEGORY_IDS)),
                                "segmentation": [polygon], "iscrowd": int(rng.random() < 0.01),
                                "bbox": [x0, y0, float(xs[k].max()) - x0, float(ys[k].max()) - y0],
                                "area": float(np.pi * radii[k] ** 2 * 0.5)})
    categories = [{"id": i, "name": f"category_{i}", "supercategory": "thing"} for i in COCO_CATEGORY_IDS]
    path = Path(root) / "annotations" / "instances_train2014.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": records, "annotations": annotations, "categories": categories}))
    (Path(root) / "train2014").mkdir()
    return path


MEASURE = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {repo!r})
    from bench.coco_scale import peak_mb, render_measured
    from data.sources import build_source
    started = time.perf_counter()
    source = build_source("coco", {root!r}, cache_dir={cache!r})
    step, count, workers = {step!r}, {count}, {workers}
    worker_peak, png_bytes = 0, 0
    if step == "imports":  # the floor of every row: python, torch, the pipeline's modules
        images = 0
    elif step == "load":
        source.class_names  # loads the annotation file
        images = len(source._api("train").imgs)
    else:
        names = source.ids("train")
        if step == "labels":
            images = sum(1 for name in names if len(source.labels(name)))
        else:
            started = time.perf_counter()  # the load is measured on its own
            worker_peak, png_bytes = render_measured(source, names[:count], workers)
            images = count
    seconds = time.perf_counter() - started
    print(json.dumps({{"images": images, "seconds": seconds, "main": peak_mb(), "child": worker_peak,
                      "png": png_bytes}}))
""")


def peak_mb(pid="self"):
    """The peak resident memory of a process (VmHWM; ru_maxrss would count the peak of the
    process that started it: Linux keeps it across exec)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _write_and_measure(item):
    write_semantic_mask(item)
    return os.getpid(), peak_mb(), item[1].stat().st_size


def render_measured(source, ids, workers):
    """``source.render_masks(ids, workers)`` as the stages run it, with each worker's peak
    memory; returns (the largest, the mean PNG size in bytes)."""
    count, tasks = source.mask_tasks(ids)
    peaks, sizes = {}, []
    with WorkerPool(workers, "mask rendering") as pool:
        for pid, peak, size in pool.map(_write_and_measure, tasks):
            peaks[pid] = max(peak, peaks.get(pid, 0))
            sizes.append(size)
    return max(peaks.values()), sum(sizes) / max(count, 1)


def measure(root, step, count=0, workers=0):
    cache = str(Path(root) / f"masks_{step}_{workers}")  # each measurement renders every mask itself
    code = MEASURE.format(repo=str(REPO), root=str(root), cache=cache, step=step, count=count, workers=workers)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(images=82783, instances=604907, render=2000, workers=(0, 1, 2)):
    rows = []
    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        path = generate(root, images, instances)
        generated = time.perf_counter() - started
        print(f"generated {path.stat().st_size / 1e6:.0f} MB ({images} images, {instances} instances) in "
              f"{generated:.0f} s; generator peak {peak_mb():.0f} MB", file=sys.stderr)
        for step, label in (("imports", "imports only"), ("load", "load"), ("labels", "load + list labels")):
            got = measure(root, step)
            rows.append({"step": label, "images": got["images"], "workers": 0, "seconds": f"{got['seconds']:.1f}",
                         "per image ms": f"{1e3 * got['seconds'] / max(got['images'], 1):.3f}",
                         "projected for the split": "-",
                         "peak MB (main)": f"{got['main']:.0f}", "peak MB (a worker)": "-", "KB a mask PNG": "-"})
        for count in workers:
            got = measure(root, "render", render, count)
            per_image = got["seconds"] / render
            rows.append({"step": "render masks", "images": render, "workers": count, "seconds": f"{got['seconds']:.1f}",
                         "per image ms": f"{1e3 * per_image:.1f}",
                         "projected for the split": f"{per_image * images / 60:.1f} min",
                         "peak MB (main)": f"{got['main']:.0f}", "peak MB (a worker)": f"{got['child']:.0f}",
                         "KB a mask PNG": f"{got['png'] / 1024:.1f}"})
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=82783)
    parser.add_argument("--instances", type=int, default=604907)
    parser.add_argument("--render", type=int, default=2000, help="images whose masks are rendered and timed")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print(table(run(args.images, args.instances, args.render, args.workers), COLUMNS))
