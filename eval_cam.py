"""Stage 3 and the scoring of every later stage: mIoU of CAM files, or of a folder of label
PNGs (affinity labels, pseudo-labels, segmentation predictions) (docs/method.md §7) -> results.json,
results.md."""
from pathlib import Path

from data.sources import CROWD_MODES, build_source
from engine import stage
from tools import dist, flags, scoring
from tools.methods import method_default
from tools.report import share_of, update_results
from tools.workers import WorkerPool

log = stage.log


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
                        help=f"try the constant background thresholds {scoring.SWEEP[0]}..{scoring.SWEEP[-1]} "
                             "and keep the best")
    parser.add_argument("--tag", help="row name in results.md (default: the map name or the label folder)")
    parser.add_argument("--note", help="text added to the row's note column (e.g. which checkpoint made the maps)")
    parser.add_argument("--share-of", metavar="TAG",
                        help="add to the note the mIoU as a percentage of the row TAG of results.md (e.g. the "
                             "segmentation against the fully supervised network)")
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


def background_settings(args, first_name):
    """The background settings to score (tools/scoring.py); a CAM's ``--bg-scale`` not given
    comes from the method its files record, and is saved with the flags."""
    if args.bg_scale is None and not (args.label_dir or args.sweep or args.threshold is not None):
        args.bg_scale = method_default("bg_scale", Path(args.cam_dir) / f"{first_name}.npy", args.map)
        stage.save_flags(args, "eval_cam")
    return scoring.backgrounds(args.sweep, args.threshold, args.bg_scale)


def score(names, source, args, settings, made_by):
    """The confusion matrices of every image summed, one per background setting, and the
    number of evaluated ground-truth pixels."""
    totals, evaluated = None, 0
    setup = (scoring.start_scoring, (source, args, settings, made_by))
    with WorkerPool(args.score_workers, "scoring", setup) as pool:
        for confusions, pixels in stage.progress(pool.map(scoring.score_image, names), total=len(names), desc="eval"):
            totals = confusions if totals is None else [t + c for t, c in zip(totals, confusions)]
            evaluated += pixels
    return totals, evaluated


def main(argv=None):
    args = parse_args(argv)
    with stage.opened(args, "eval_cam", device="cpu") as (info, work_dir):
        if not args.label_dir:
            args.cam_dir = args.cam_dir or str(work_dir / "cam")
        source = build_source(args.dataset, args.data_root, coco_crowd=args.coco_crowd)
        listed = source.ids(args.split)
        source.render_masks(listed, workers=args.score_workers)  # COCO: once, before the pool's workers read them
        _, checkpoints, made_by = stage.upstream_folder(args.label_dir or args.cam_dir, "outputs", source, info,
                                                        work_dir)
        names = scoring.scored_images(source, listed)
        tag = args.tag or (Path(args.label_dir).name if args.label_dir else args.map)
        facts = {"made_by": checkpoints, "split": args.split, "images": len(names), "listed": len(listed)}
        if not names:
            update_results(work_dir, tag, {"miou": None, "note": f"not scored: no image of {args.split} has a mask",
                                           **facts})
            print(f"{tag}: not scored (no image of the {len(listed)} of {args.split} has a ground-truth mask)")
            return
        settings = background_settings(args, names[0])
        totals, evaluated = score(names, source, args, settings, made_by)
        entry = {**scoring.best_entry(totals, evaluated, settings, source.class_names, args), **facts}
        if len(names) < len(listed):
            entry["note"] += f"; {len(names)} of {len(listed)} images have masks"
        if args.share_of:
            entry["note"] += f"; {share_of(work_dir, args.share_of, entry['miou'])}"
        update_results(work_dir, tag, entry)
        print(scoring.describe(tag, entry, source.class_names))


if __name__ == "__main__":
    stage.run_stage(main)
