"""Confusion matrix (docs/method.md §7): one ``bincount`` per image against a loop over class pairs.

``python -m bench.confusion`` prints time and peak extra memory of
``bench.baselines.loop_confusion_matrix`` and ``tools.metrics.confusion_matrix`` over
200 synthetic 375x500 label maps (VOC's usual size) with 21 classes and ignored ground
truth pixels, and whether the two matrices are equal.  CPU only: the metric is numpy.
"""
import numpy as np
import torch

from bench.baselines import loop_confusion_matrix
from bench.measure import COLUMNS, comparison_row, measure, table
from tools.metrics import confusion_matrix

CASE = {"images": 200, "size": (375, 500), "classes": 21}


def _label_maps(case):
    """Seeded ground truths (blocks of classes, a 255 border) and predictions (70% right)."""
    rng = np.random.default_rng(0)
    n, (h, w), c = case["images"], case["size"], case["classes"]
    blocks = rng.integers(0, c, size=(n, h // 25 + 1, w // 25 + 1), dtype=np.uint8)
    gts = blocks.repeat(25, 1).repeat(25, 2)[:, :h, :w]
    gts[:, :5], gts[:, -5:] = 255, 255
    noise = rng.integers(0, c, size=gts.shape, dtype=np.uint8)
    preds = np.where((rng.random(gts.shape) < 0.7) & (gts != 255), gts, noise)
    return list(preds), list(gts)


def run(case=CASE):
    """One CPU row: the class-pair loop against ``tools.metrics.confusion_matrix``."""
    preds, gts = _label_maps(case)
    c = case["classes"]
    cpu = torch.device("cpu")
    baseline = measure(lambda: loop_confusion_matrix(preds, gts, c), cpu, repeat=1)
    ours = measure(lambda: confusion_matrix(preds, gts, c), cpu)
    same = np.array_equal(loop_confusion_matrix(preds, gts, c), confusion_matrix(preds, gts, c))
    size = f"{case['images']} maps {case['size'][0]}x{case['size'][1]}, {c} classes"
    return [comparison_row("confusion matrix", cpu, size, baseline, ours,
                           "same matrix" if same else "matrices DIFFER")]


if __name__ == "__main__":
    print(table(run(), COLUMNS))
