"""Stage 4: confident foreground / background / unsure labels from the CAMs by dense CRF
-> affinity_labels/<name>.png (docs/method.md §2, §8)."""
import functools
from pathlib import Path

from data.sources import build_source
from engine import stage
from tools import dist, flags, provenance
from tools.confident_labels import confident_labels, psa_labels
from tools.cam_files import load_cam
from tools.io import read_image, write_label_png
from tools.methods import method_default
from tools.palette import voc_palette
from tools.workers import WorkerPool

log = stage.log


def parse_args(argv=None):
    parser = stage.parser_for(__doc__)
    stage.add_dataset_args(parser, split_default="train")
    parser.add_argument("--work-dir", required=True, help="run directory that holds everything this run writes")
    parser.add_argument("--cam-dir", help="folder of CAM .npy files (default: WORK_DIR/cam)")
    parser.add_argument("--out-dir", help="where the label PNGs go (default: WORK_DIR/affinity_labels)")
    parser.add_argument("--map", default="cam", help="which map of the CAM files to use")
    parser.add_argument("--mode", choices=("sipe", "psa"), default="sipe",
                        help="sipe: two label CRFs, background as is and times --bg-conf-scale (SIPE, IRN); "
                             "psa: two probability CRFs with background (1 - max fg) ** alpha (AffinityNet)")
    parser.add_argument("--bg-conf-scale", type=flags.positive_float,
                        help="sipe mode: factor on the background for the confident background (default: from the "
                             "method the CAM files record, tools/methods.py: 0.5 SIPE, 0.8 AE-SIPE)")
    parser.add_argument("--low-alpha", type=flags.positive_float, default=4,
                        help="psa mode: power of the confident-foreground CRF")
    parser.add_argument("--high-alpha", type=flags.positive_float, default=32,
                        help="psa mode: power of the confident-background CRF")
    parser.add_argument("--crf-workers", type=flags.non_negative_int, default=dist.cpus_per_process(),
                        help="CRF processes (0: this process); the default is the CPUs available, divided among "
                             "torchrun processes")
    stage.add_overwrite_arg(parser)
    stage.recipe_defaults(parser, argv, "make_affinity_labels")
    args = parser.parse_args(argv)
    args.cam_dir = args.cam_dir or str(Path(args.work_dir) / "cam")
    args.out_dir = args.out_dir or str(Path(args.work_dir) / "affinity_labels")
    return args


def label_image(item, args, num_classes, made_by):
    """Write the affinity label PNG of one ``(name, image path, its labels)`` (runs in a pool worker)."""
    name, image_path, classes = item
    cam_path = Path(args.cam_dir) / f"{name}.npy"
    image = read_image(image_path)
    keys, cam = load_cam(cam_path, args.map, num_classes, image.shape[:2], made_by, classes)
    if args.mode == "psa":
        labels = psa_labels(image, keys, cam, args.low_alpha, args.high_alpha)
    else:
        labels = confident_labels(image, keys, cam, args.bg_conf_scale)
    write_label_png(Path(args.out_dir) / f"{name}.png", labels, voc_palette())


def main(argv=None):
    args = parse_args(argv)
    with stage.opened(args, "make_affinity_labels", device="cpu") as (info, work_dir):
        out_dir = Path(args.out_dir)
        source = build_source(args.dataset, args.data_root)
        names = source.ids(args.split)
        if args.mode == "sipe" and args.bg_conf_scale is None:
            args.bg_conf_scale = method_default("bg_conf_scale", Path(args.cam_dir) / f"{names[0]}.npy")
            stage.save_flags(args, "make_affinity_labels", info.is_main)
        cams, checkpoints, made_by = stage.upstream_folder(args.cam_dir, "CAM files", source, info, work_dir)
        data = stage.data_inputs(source, args.split, info, work_dir, labels=False)
        record = provenance.make_record("make_affinity_labels", {"cams": cams, **data}, provenance.settings(args),
                                        checkpoints, data_split=args.split)
        stage.claim_outputs([out_dir], record, info, args.overwrite, ".png")
        todo = stage.images_to_do(names, info, lambda n: [out_dir / f"{n}.png"])
        log.info("%s: %d of %d images to do on rank %d (%s mode, %d processes, background x %s)", out_dir, len(todo),
                 len(names), info.rank, args.mode, args.crf_workers, args.bg_conf_scale)
        work = functools.partial(label_image, args=args, num_classes=source.num_classes, made_by=made_by)
        items = [(name, str(source.image_path(name)), source.labels(name)) for name in todo]
        with WorkerPool(args.crf_workers, "CRF", writes_to=[out_dir]) as pool:
            for _ in stage.progress(pool.map(work, items), info.is_main, total=len(items), desc="affinity labels"):
                pass


if __name__ == "__main__":
    stage.run_stage(main)
