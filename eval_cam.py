"""Stage 3: mIoU of CAM files or of a folder of label PNGs (SPEC 7) -> results.json, results.md."""
import functools
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from data.datasets import build_source
from tools import stage
from tools.io import PipelineError, load_cam, read_label_png
from tools.metrics import confusion_matrix
from tools.report import summarize, update_results

log = stage.log
SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 13))


def parse_args(argv=None):
    parser = stage.parser_for(__doc__)
    stage.add_dataset_args(parser, split_default="train")
    parser.add_argument("--work-dir", required=True, help="run directory (results.json and results.md go here)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--cam-dir", help="folder of CAM .npy files (default: WORK_DIR/cam)")
    what.add_argument("--label-dir", help="folder of label PNGs to evaluate instead of CAMs")
    parser.add_argument("--map", default="cam", help="which map of the CAM files: cam, plain_cam, is_cam")
    parser.add_argument("--bg-scale", type=float, default=1.0,
                        help="factor on the background channel before the argmax (0.8 for AE-SIPE)")
    parser.add_argument("--threshold", type=float,
                        help="replace the background channel by this constant (maps without a background)")
    parser.add_argument("--sweep", action="store_true",
                        help=f"try the constant background thresholds {SWEEP[0]}..{SWEEP[-1]} and keep the best")
    parser.add_argument("--tag", help="row name in results.md (default: the map name or the label folder)")
    parser.add_argument("--num-workers", type=int, default=4, help="processes that read the files")
    return parser.parse_args(argv)


def cam_predictions(path, map_name, num_classes, gt_shape, backgrounds):
    """Label maps of one CAM file, one per background setting ``("scale", s)`` or ``("const", t)``."""
    keys, cam = load_cam(path, map_name)
    if keys.size == 0 or keys[0] != 0 or keys.max() >= num_classes or np.any(np.diff(keys) <= 0):
        raise PipelineError(f"{path}: keys {keys.tolist()} are not 0 followed by sorted class ids < {num_classes}")
    if cam.shape[1:] != gt_shape:
        raise PipelineError(f"{path}: map size {cam.shape[1:]} differs from its image {gt_shape}")
    predictions = []
    for kind, value in backgrounds:
        scored = cam.copy()
        scored[0] = scored[0] * value if kind == "scale" else value
        predictions.append(keys[scored.argmax(0)])
    return predictions


def image_confusions(name, source, args, backgrounds):
    """Confusion matrices of one image, one per background setting (one for label folders)."""
    gt = read_label_png(source.mask_path(name))
    n = source.num_classes
    if args.label_dir:
        path = Path(args.label_dir) / f"{name}.png"
        pred = read_label_png(path)
        if pred.shape != gt.shape:
            raise PipelineError(f"{path}: label size {pred.shape} differs from the ground truth {gt.shape}")
        if np.any((pred >= n) & (pred != 255)):
            raise PipelineError(f"{path}: holds class {pred.max()}, the dataset has {n}")
        pred = np.where(pred == 255, 0, pred)
        return [confusion_matrix(pred, gt, n)]
    path = Path(args.cam_dir) / f"{name}.npy"
    return [confusion_matrix(pred, gt, n) for pred in cam_predictions(path, args.map, n, gt.shape, backgrounds)]


def main(argv=None):
    args = parse_args(argv)
    work_dir = stage.prepare_run(args, "eval_cam")
    if not args.label_dir:
        args.cam_dir = args.cam_dir or str(work_dir / "cam")
    source = build_source(args.dataset, args.data_root)
    names = source.ids(args.split)
    if args.sweep:
        backgrounds = [("const", t) for t in SWEEP]
    elif args.threshold is not None:
        backgrounds = [("const", args.threshold)]
    else:
        backgrounds = [("scale", args.bg_scale)]

    work = functools.partial(image_confusions, source=source, args=args, backgrounds=backgrounds)
    totals = None
    with Pool(max(1, args.num_workers)) as pool:
        for confusions in stage.progress(pool.imap(work, names, chunksize=4), total=len(names), desc="eval"):
            totals = confusions if totals is None else [t + c for t, c in zip(totals, confusions)]
    entries = [summarize(total, source.class_names) for total in totals]
    best = max(range(len(entries)), key=lambda i: entries[i]["miou"])
    entry = entries[best]
    kind, value = backgrounds[best]
    if args.label_dir:
        tag, entry["note"] = args.tag or Path(args.label_dir).name, "labels"
    else:
        tag = args.tag or args.map
        entry["note"] = f"bg x {value}" if kind == "scale" else f"bg threshold {value}"
    if args.sweep:
        entry["sweep"] = {str(t): e["miou"] for (_, t), e in zip(backgrounds, entries)}
        for (_, t), e in zip(backgrounds, entries):
            print(f"threshold {t:.2f}: mIoU {e['miou']:.2f}")
    entry.update(split=args.split, images=len(names))
    update_results(work_dir, tag, entry)
    print(f"{tag}: mIoU {entry['miou']:.2f} ({entry['note']}, {len(names)} images of {args.split})")
    width = max(len(n) for n in source.class_names)
    for name, value in entry["iou"].items():
        print(f"  {name:<{width}} {'-' if value is None else f'{value:6.2f}'}")


if __name__ == "__main__":
    stage.run_stage(main)
