"""What eval_cam scores (docs/method.md §7): the label maps of a CAM file under each
background setting, one image's confusion matrices against its ground truth, and the
results row made from the summed matrices."""
from pathlib import Path

import numpy as np

from tools.cam_files import load_cam
from tools.io import PipelineError, image_size, read_label_png
from tools.metrics import confusion_matrix, coverage, labelled_confusion
from tools.report import summarize

SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95


def backgrounds(sweep, threshold, bg_scale):
    """The background settings to score: ``("const", t)`` for every threshold of the sweep or
    the one given, else ``("scale", bg_scale)`` (1.0 when None: the map's own background)."""
    if sweep:
        return [("const", t) for t in SWEEP]
    if threshold is not None:
        return [("const", threshold)]
    return [("scale", 1.0 if bg_scale is None else bg_scale)]


def cam_predictions(path, map_name, num_classes, gt_shape, settings, made_by=None, classes=None):
    """Label maps of one CAM file, one per background setting ``("scale", s)`` or ``("const", t)``;
    ``classes``: the image's labels, which a published code base's file must hold."""
    keys, cam = load_cam(path, map_name, num_classes, gt_shape, made_by, classes)
    predictions = []
    for kind, value in settings:
        scored = cam.copy()
        scored[0] = scored[0] * value if kind == "scale" else value
        predictions.append(keys[scored.argmax(0)])
    return predictions


def image_confusions(name, source, args, settings, made_by):
    """Confusion matrices of one image, one per background setting (one for label folders),
    and the image's number of evaluated (not ignored) ground-truth pixels.  ``args``: eval_cam's
    flags (``label_dir``, ``confident``, ``cam_dir``, ``map``)."""
    n = source.num_classes
    mask_path, image_path = source.mask_path(name), source.image_path(name)
    if mask_path is None:
        raise PipelineError(f"{image_path}: no ground-truth mask for this image")
    gt = read_label_png(mask_path, n)
    size = image_size(image_path)
    if gt.shape != size:
        raise PipelineError(f"{mask_path}: mask size {gt.shape} differs from its image {size}")
    evaluated = int(np.count_nonzero(gt != 255))
    if args.label_dir:
        path = Path(args.label_dir) / f"{name}.png"
        pred = read_label_png(path, n)
        if pred.shape != gt.shape:
            raise PipelineError(f"{path}: label size {pred.shape} differs from the ground truth {gt.shape}")
        if args.confident:
            return [labelled_confusion(pred, gt, n)], evaluated
        pred = np.where(pred == 255, 0, pred)
        return [confusion_matrix(pred, gt, n)], evaluated
    path = Path(args.cam_dir) / f"{name}.npy"
    predictions = cam_predictions(path, args.map, n, gt.shape, settings, made_by, source.labels(name))
    return [confusion_matrix(pred, gt, n) for pred in predictions], evaluated


_SCORING = []  # (source, args, settings, made_by) of a pool worker (or of this process), set once


def start_scoring(*state):
    _SCORING[:] = state


def score_image(name):
    """``image_confusions`` of one image, in a pool worker or here (``start_scoring`` gave the rest)."""
    return image_confusions(name, *_SCORING)


def scored_images(source, names):
    """The images of ``names`` that have a ground-truth mask.  A custom dataset may have
    masks for a subset (or none: own data needs none); VOC and COCO have one for every
    image, and a missing one is an error."""
    scored = [name for name in names if source.mask_path(name) is not None]
    if len(scored) < len(names) and source.name != "custom":
        missing = next(name for name in names if source.mask_path(name) is None)
        raise PipelineError(f"{source.image_path(missing)}: no ground-truth mask for this image")
    return scored


def best_entry(totals, evaluated, settings, class_names, args):
    """The results row of the best background setting: per-class IoU, mIoU, precision,
    recall and its note (which setting; with ``--confident`` the coverage; with ``--sweep``
    the mIoU of every threshold)."""
    entries = [summarize(total, class_names) for total in totals]
    best = max(range(len(entries)), key=lambda i: entries[i]["miou"])
    entry = entries[best]
    kind, value = settings[best]
    if args.label_dir:
        entry["note"] = "labels"
        if args.confident:
            entry["coverage"] = round(100 * coverage(totals[best], evaluated), 2)
            entry["note"] = f"confident, coverage {entry['coverage']:.1f}%"
    else:
        entry["note"] = f"bg x {value}" if kind == "scale" else f"bg threshold {value}"
        if args.sweep and value in (SWEEP[0], SWEEP[-1]):
            entry["note"] += " (an end of the sweep: the best may lie beyond it)"
    if args.note:
        entry["note"] = f"{entry['note']}; {args.note}"
    if args.sweep:
        entry["sweep"] = {str(t): e["miou"] for (_, t), e in zip(settings, entries)}
    return entry


def describe(tag, entry, class_names):
    """The lines eval_cam prints for a scored row: the sweep (if any), the mIoU, each class's IoU."""
    lines = [f"threshold {float(t):.2f}: mIoU {miou:.2f}" for t, miou in entry.get("sweep", {}).items()]
    lines.append(f"{tag}: mIoU {entry['miou']:.2f} ({entry['note']}, {entry['images']} images of {entry['split']})")
    width = max(len(n) for n in class_names)
    lines += [f"  {name:<{width}} {'-' if value is None else f'{value:6.2f}'}" for name, value in entry["iou"].items()]
    return "\n".join(lines)
