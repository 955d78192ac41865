"""Stage 3 and the scoring of every later stage: mIoU of CAM files, or of a folder of label
PNGs (affinity labels, pseudo-labels, segmentation predictions) (SPEC 7) -> results.json,
results.md."""
from pathlib import Path

import numpy as np

from data.sources import CROWD_MODES, build_source
from engine import stage
from tools import dist, flags
from tools.cam_files import load_cam
from tools.io import PipelineError, image_size, read_label_png
from tools.methods import method_default
from tools.metrics import confusion_matrix, coverage, labelled_confusion
from tools.report import summarize, update_results
from tools.workers import WorkerPool

log = stage.log
SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95


def parse_args(argv=None):
    parser = stage.parser_for(__doc__)
    stage.add_dataset_args(parser, split_default="train")
    parser.add_argument("--work-dir", required=True, help="run directory (results.json and results.md go here)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--cam-dir", help="folder of CAM .npy files (default: WORK_DIR/cam)")
    what.add_argument("--label-dir", help="folder of label PNGs to evaluate instead of CAMs: affinity labels, "
                                         "pseudo-labels or a segmentation network's predictions")
    parser.add_argument("--confident", action="store_true",
                        help="with --label-dir: 255 in the labels means no label (affinity labels); score only "
                             "the labelled pixels and report the percentage of pixels labelled (coverage)")
    parser.add_argument("--map", default="cam",
                        help="which map of the CAM files: cam (the method's final map), plain_cam (the classifier's "
                             "CAM: for PSA's plain CAM classifier its final map), is_cam (SIPE's IS-CAM)")
    parser.add_argument("--bg-scale", type=flags.non_negative_float,
                        help="factor on the background channel before the argmax (default: from the method the "
                             "CAM files record, tools/methods.py: 0.8 for AE-SIPE's cam map, else 1.0)")
    parser.add_argument("--threshold", type=flags.fraction,
                        help="replace the background channel by this constant (maps without a background)")
    parser.add_argument("--sweep", action="store_true",
                        help=f"try the constant background thresholds {SWEEP[0]}..{SWEEP[-1]} and keep the best")
    parser.add_argument("--tag", help="row name in results.md (default: the map name or the label folder)")
    parser.add_argument("--note", help="text added to the row's note column (e.g. which checkpoint made the maps)")
    parser.add_argument("--coco-crowd", choices=CROWD_MODES, default="background",
                        help="COCO ground truth: crowd regions are background (0, as the published masks) "
                             "or ignored (255)")
    parser.add_argument("--score-workers", type=flags.non_negative_int, default=dist.cpus_per_process(),
                        help="processes that read and score the files (and render COCO's masks first; 0: this "
                             "process); the default is the CPUs available")
    stage.recipe_defaults(parser, argv, "eval_cam")
    args = parser.parse_args(argv)
    if args.confident and not args.label_dir:
        parser.error("--confident needs --label-dir")
    return args


def cam_predictions(path, map_name, num_classes, gt_shape, backgrounds, made_by=None):
    """Label maps of one CAM file, one per background setting ``("scale", s)`` or ``("const", t)``."""
    keys, cam = load_cam(path, map_name, num_classes, gt_shape, made_by)
    predictions = []
    for kind, value in backgrounds:
        scored = cam.copy()
        scored[0] = scored[0] * value if kind == "scale" else value
        predictions.append(keys[scored.argmax(0)])
    return predictions


def image_confusions(name, source, args, backgrounds, made_by):
    """Confusion matrices of one image, one per background setting (one for label folders),
    and the image's number of evaluated (not ignored) ground-truth pixels."""
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
    predictions = cam_predictions(path, args.map, n, gt.shape, backgrounds, made_by)
    return [confusion_matrix(pred, gt, n) for pred in predictions], evaluated


_SCORING = []  # (source, args, backgrounds, made_by) of a pool worker (or of this process), set once


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


def main(argv=None):
    args = parse_args(argv)
    with stage.opened(args, "eval_cam", device="cpu") as (info, work_dir):
        if not args.label_dir:
            args.cam_dir = args.cam_dir or str(work_dir / "cam")
        source = build_source(args.dataset, args.data_root, coco_crowd=args.coco_crowd)
        names = source.ids(args.split)
        source.render_masks(names, workers=args.score_workers)  # COCO: once, before the pool's workers read them
        _, checkpoints, made_by = stage.upstream_folder(args.label_dir or args.cam_dir, "outputs", source, info,
                                                        work_dir)
        names, listed = scored_images(source, names), len(names)
        tag = args.tag or (Path(args.label_dir).name if args.label_dir else args.map)
        if not names:
            update_results(work_dir, tag, {"miou": None, "note": f"not scored: no image of {args.split} has a mask",
                                           "made_by": checkpoints, "split": args.split, "images": 0,
                                           "listed": listed})
            print(f"{tag}: not scored (no image of the {listed} of {args.split} has a ground-truth mask)")
            return
        if args.sweep:
            backgrounds = [("const", t) for t in SWEEP]
        elif args.threshold is not None:
            backgrounds = [("const", args.threshold)]
        else:
            if args.bg_scale is None and not args.label_dir:
                args.bg_scale = method_default("bg_scale", Path(args.cam_dir) / f"{names[0]}.npy", args.map)
                stage.save_flags(args, "eval_cam")
            backgrounds = [("scale", 1.0 if args.bg_scale is None else args.bg_scale)]

        totals, evaluated = None, 0
        setup = (start_scoring, (source, args, backgrounds, made_by))
        with WorkerPool(args.score_workers, "scoring", setup) as pool:
            for confusions, pixels in stage.progress(pool.map(score_image, names), total=len(names), desc="eval"):
                totals = confusions if totals is None else [t + c for t, c in zip(totals, confusions)]
                evaluated += pixels
        entries = [summarize(total, source.class_names) for total in totals]
        best = max(range(len(entries)), key=lambda i: entries[i]["miou"])
        entry = entries[best]
        kind, value = backgrounds[best]
        if args.label_dir:
            entry["note"] = "labels"
            if args.confident:
                entry["coverage"] = round(100 * coverage(totals[best], evaluated), 2)
                entry["note"] = f"confident, coverage {entry['coverage']:.1f}%"
        else:
            entry["note"] = f"bg x {value}" if kind == "scale" else f"bg threshold {value}"
            if args.sweep and value in (SWEEP[0], SWEEP[-1]):
                entry["note"] += " (an end of the sweep: the best may lie beyond it)"
        entry["made_by"] = checkpoints
        if args.note:
            entry["note"] = f"{entry['note']}; {args.note}"
        if args.sweep:
            entry["sweep"] = {str(t): e["miou"] for (_, t), e in zip(backgrounds, entries)}
            for (_, t), e in zip(backgrounds, entries):
                print(f"threshold {t:.2f}: mIoU {e['miou']:.2f}")
        entry.update(split=args.split, images=len(names), listed=listed)
        if len(names) < listed:
            entry["note"] += f"; {len(names)} of {listed} images have masks"
        update_results(work_dir, tag, entry)
        print(f"{tag}: mIoU {entry['miou']:.2f} ({entry['note']}, {len(names)} images of {args.split})")
        width = max(len(n) for n in source.class_names)
        for name, value in entry["iou"].items():
            print(f"  {name:<{width}} {'-' if value is None else f'{value:6.2f}'}")


if __name__ == "__main__":
    stage.run_stage(main)
