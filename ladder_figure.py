"""A picture of a run's ladder on a few images: the image, its ground truth, then the label map
of each stage the run has files for (CAM, IS-CAM, AE-IS-CAM, random walk, segmentation),
each blended over the image -> one small PNG.  The drivers make WORK_DIR/ladder.png with it
at the end of a run."""
from pathlib import Path

from data.sources import build_source
from engine import stage
from tools import flags, scoring
from tools.cam_files import cam_method
from tools.io import PipelineError, image_size, read_image, read_label_png, write_image
from tools.methods import method_default
from tools.report import load_results
from tools.visualize import labelled_grid, overlay

# (column title, the CAM file's map) of the CAM ladder, for the methods whose files hold it
CAM_COLUMNS = {"cam": [("CAM", "cam")],
               "sipe": [("CAM", "plain_cam"), ("IS-CAM", "cam")],
               "ae_sipe": [("CAM", "plain_cam"), ("IS-CAM", "is_cam"), ("AE-IS-CAM", "cam")]}


def parse_args(argv=None):
    parser = stage.parser_for(__doc__)
    stage.add_dataset_args(parser, split_default="train")
    parser.add_argument("--work-dir", required=True, help="the run directory to draw")
    parser.add_argument("--seg-split", default="val",
                        help="the split whose segmentation/<split>/ predictions add rows of their own")
    parser.add_argument("--images", type=flags.positive_int, default=4, help="images of each split drawn")
    parser.add_argument("--height", type=flags.positive_int, default=96, help="height of each picture, pixels")
    parser.add_argument("--out", help="the PNG to write (default: WORK_DIR/ladder.png)")
    return parser.parse_args(argv)


def best_threshold(results):
    """The constant background with the best mIoU in the run's CAM sweep (eval_cam --sweep
    --tag CAM), or None: the CAM column is drawn as eval_cam scored it."""
    sweep = results.get("CAM", {}).get("sweep")
    return float(max(sweep, key=sweep.get)) if sweep else None


def cam_labels(source, cam_files, map_name, threshold=None):
    """{image: label map} of one map of the CAM files that exist: the background constant
    ``threshold`` or, without one, the map's own background times the method's factor."""
    labels = {}
    for name, path in cam_files.items():
        if path.exists():
            setting = ("const", threshold) if threshold is not None else \
                ("scale", method_default("bg_scale", path, map_name))
            size = image_size(source.image_path(name))
            labels[name] = scoring.cam_predictions(path, map_name, source.num_classes, size, [setting])[0]
    return labels


def segmentation_dir(work_dir, split):
    """The segmentation network's predictions of ``split``: refined by the CRF where the run has them."""
    refined = work_dir / "segmentation_crf" / split
    return refined if refined.is_dir() else work_dir / "segmentation" / split


def column_labels(work_dir, source, names, seg_split):
    """{column title: {image: label map}} of every stage the run has files for."""
    cam_files = {name: work_dir / "cam" / f"{name}.npy" for name in names}
    present = [path for path in cam_files.values() if path.exists()]
    method = cam_method(present[0]) if present else None
    threshold = best_threshold(load_results(work_dir))
    columns = {title: cam_labels(source, cam_files, map_name, threshold if title == "CAM" else None)
               for title, map_name in CAM_COLUMNS.get(method, [])}
    for title, folder in (("random walk", work_dir / "pseudo_labels"),
                          ("segmentation", segmentation_dir(work_dir, seg_split))):
        files = {name: folder / f"{name}.png" for name in names if (folder / f"{name}.png").exists()}
        if files:
            columns[title] = {name: read_label_png(path, source.num_classes) for name, path in files.items()}
    return columns


def figure_rows(source, names, columns):
    """One row per image: the image, the ground truth (None without a mask), then each column."""
    rows = []
    for name in names:
        image = read_image(source.image_path(name))
        mask = source.mask_path(name)
        row = [image, None if mask is None else overlay(image, read_label_png(mask))]
        row += [overlay(image, maps[name]) if name in maps else None for maps in columns.values()]
        rows.append(row)
    return rows


def main(argv=None):
    args = parse_args(argv)
    work_dir = Path(args.work_dir)
    if not work_dir.is_dir():
        raise PipelineError(f"{work_dir}: not a run directory")
    source = build_source(args.dataset, args.data_root)
    names = source.ids(args.split)[:args.images]
    if segmentation_dir(work_dir, args.seg_split).is_dir() and args.seg_split != args.split:
        names += source.ids(args.seg_split)[:args.images]
    columns = column_labels(work_dir, source, names, args.seg_split)
    rows = figure_rows(source, names, columns)
    out = Path(args.out or work_dir / "ladder.png")
    write_image(out, labelled_grid(["image", "ground truth", *columns], rows, height=args.height))
    print(f"{out}: {len(rows)} images, columns: image, ground truth, {', '.join(columns)}")


if __name__ == "__main__":
    stage.run_stage(main)
