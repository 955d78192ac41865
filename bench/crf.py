"""CRF affinity labels (docs/method.md §8): throughput against the number of worker processes.

``python -m bench.crf`` runs ``tools.confident_labels.confident_labels`` (two label CRFs
per image, ``tools.crf.crf_labels``) over 40 synthetic images of half VOC size
(188x250, a background and two classes) through a ``multiprocessing.Pool`` as
``make_affinity_labels.py`` does, with 1, 2, 4, ... processes up to the usable CPUs, and
prints the wall time and images per second of each.  Each worker makes its image and CAM
from the image's index (where the stage reads files).  CPU only; memory is not measured
(it is spread over the worker processes).
"""
import os
import time
from multiprocessing import Pool

import numpy as np

from bench.measure import COLUMNS, scaling_rows, table, worker_counts
from tools.confident_labels import confident_labels

CASE = {"images": 40, "size": (188, 250), "classes": 2, "bg_conf_scale": 0.8}


def synthetic_image(index, case):
    """Seeded uint8 image [H, W, 3] of coloured 25-px blocks with noise, its keys and a
    blocky CAM [1 + classes, H, W] in [0, 1] that follows the blocks."""
    rng = np.random.default_rng(index)
    (h, w), k = case["size"], case["classes"] + 1
    grid = rng.integers(0, k, size=(h // 25 + 1, w // 25 + 1))
    regions = grid.repeat(25, 0).repeat(25, 1)[:h, :w]
    colours = rng.integers(0, 256, size=(k, 3))
    image = np.clip(colours[regions] + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    cam = 0.6 * (regions[None] == np.arange(k)[:, None, None]) + 0.4 * rng.random((k, h, w))
    keys = np.concatenate([[0], 1 + rng.choice(20, k - 1, replace=False)])
    return image, keys, cam.astype(np.float32)


def _label_one(index, case=CASE):
    """The confident labels of synthetic image ``index`` (runs in a pool worker)."""
    image, keys, cam = synthetic_image(index, case)
    return confident_labels(image, keys, cam, case["bg_conf_scale"])


def _timed_pool(workers, case):
    """Label every image with ``workers`` processes: (seconds, labels in image order)."""
    start = time.perf_counter()
    with Pool(workers) as pool:
        labels = pool.starmap(_label_one, [(index, case) for index in range(case["images"])])
    return time.perf_counter() - start, labels


def run(case=CASE, workers=None):
    """One row per worker count (default: 1, 2, 4, ... up to the usable CPUs) after the
    first, against the first."""
    size = f"{case['images']} images {case['size'][0]}x{case['size'][1]}, {case['classes'] + 1} labels"
    seconds, labels = {}, {}
    for count in workers or worker_counts():
        seconds[count], labels[count] = _timed_pool(count, case)
    first, *others = labels.values()
    same = all(np.array_equal(a, b) for other in others for a, b in zip(first, other, strict=True))
    return scaling_rows("CRF affinity labels (2 CRFs/image)", size, case["images"], seconds,
                        "same labels" if same else "labels DIFFER")


if __name__ == "__main__":
    print(f"{os.cpu_count()} CPUs")
    print(table(run(), COLUMNS))
