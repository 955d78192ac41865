"""Stage 7: multi-scale + flip inference of the segmentation network (docs/method.md §13), optionally
refined by the dense CRF -> segmentation/<split>/<name>.png (and segmentation_crf/<split>/);
``--split test`` also fills the VOC evaluation server's folder."""
import functools
from pathlib import Path

from data.datasets import InferenceDataset, single
from data.sources import build_source
from engine import stage
from engine.checkpoint import load_checkpoint, load_weights
from net.segmentation import multiscale_probs, segmentation_net_of
from tools import dist, flags, provenance
from tools.crf import crf_segmentation
from tools.io import read_image, read_label_png, write_image, write_label_png
from tools.palette import voc_palette
from tools.visualize import label_panel
from tools.workers import WorkerPool

log = stage.log
SERVER_DIR = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"


def parse_args(argv=None):
    parser = stage.parser_for(__doc__)
    stage.add_dataset_args(parser, split_default="val")
    stage.add_runtime_args(parser)
    parser.add_argument("--checkpoint", help="segmentation network (default: WORK_DIR/ckpt/seg.pth)")
    parser.add_argument("--scales", type=flags.positive_float, nargs="+", help="inference scales (docs/method.md §13)")
    parser.add_argument("--crf", action="store_true",
                        help="also write CRF-refined predictions to segmentation_crf/<split>/")
    parser.add_argument("--crf-workers", type=flags.non_negative_int, default=dist.cpus_per_process(),
                        help="CRF processes (0: this process); the default is the CPUs available, divided among "
                             "torchrun processes")
    parser.add_argument("--visualize", type=flags.non_negative_int, default=0, metavar="N",
                        help="write image | prediction (| CRF) | ground truth pictures of the first N images "
                             "to vis/segmentation/")
    stage.add_overwrite_arg(parser)
    stage.recipe_defaults(parser, argv, "infer_seg")
    return parser.parse_args(argv)


def crf_refine(image_path, probs, out_paths):
    """CRF-refined prediction of one image (runs in a pool worker), written to each of
    ``out_paths``; returns it."""
    refined = crf_segmentation(read_image(image_path), probs).astype("uint8")
    for path in out_paths:
        write_label_png(path, refined, voc_palette())
    return refined


def main(argv=None):
    args = parse_args(argv)
    with stage.opened(args, "infer_seg") as (info, work_dir):
        source = build_source(args.dataset, args.data_root)
        path = Path(args.checkpoint or work_dir / "ckpt" / "seg.pth")
        checkpoint = load_checkpoint(path, {"kind": "seg", "num_classes": source.num_classes})
        model = segmentation_net_of(checkpoint, source.num_classes)
        load_weights(model, checkpoint["model"], path)
        model = stage.inference_model(model, info.device, args.channels_last)

        plain_dir = work_dir / "segmentation" / args.split
        crf_dir = work_dir / "segmentation_crf" / args.split
        server_dir = work_dir / SERVER_DIR if args.split == "test" else None
        out_dirs = [plain_dir] + ([crf_dir] if args.crf else []) + ([server_dir] if server_dir else [])
        stage.check_class_names(checkpoint, path, source)
        sha, described = provenance.checkpoint_input(path, checkpoint)
        data = stage.data_inputs(source, args.split, info, work_dir, labels=False)
        for folders, keep in ((out_dirs[:1 + args.crf], ()), ([server_dir] if server_dir else [], ("crf",))):
            record = provenance.make_record("infer_seg", {"checkpoint": sha, **data},
                                            provenance.settings(args, keep=keep),
                                            [described, *checkpoint.get("made_from", {}).get("checkpoints", [])],
                                            data_split=args.split)
            stage.claim_outputs(folders, record, info, args.overwrite, ".png")
        names = source.ids(args.split)
        todo = stage.images_to_do(names, info, lambda n: [d / f"{n}.png" for d in out_dirs])
        source.render_masks(todo[:args.visualize])  # COCO: the ground truth of the pictures
        log.info("%s: %d of %d images to do on rank %d", plain_dir, len(todo), len(names), info.rank)
        loader = stage.loader(InferenceDataset(source, args.split, ids=todo, scales=args.scales, keys=False), info,
                              args.num_workers, batch_size=1, collate_fn=single)
        draw = functools.partial(show, work_dir, source)
        with WorkerPool(args.crf_workers if args.crf and todo else 0, "CRF", writes_to=out_dirs[1:]) as pool:
            for index, item in enumerate(stage.progress(loader, info.is_main, total=len(todo), desc="infer_seg")):
                name, image = item["name"], item["image"]
                images = [scaled.to(info.device, non_blocking=True) for scaled in item["scaled"]]
                with stage.autocast(info.device, args.amp):
                    probs = multiscale_probs(model, images, image.shape[:2])
                labels = probs.argmax(dim=0).byte().cpu().numpy()
                write_label_png(plain_dir / f"{name}.png", labels, voc_palette())
                if server_dir and not args.crf:
                    write_label_png(server_dir / f"{name}.png", labels, voc_palette())
                shown = (name, image, labels) if index < args.visualize else None
                if args.crf:
                    crf_paths = [crf_dir / f"{name}.png"] + ([server_dir / f"{name}.png"] if server_dir else [])
                    crf_args = (str(source.image_path(name)), probs.cpu().numpy(), crf_paths)
                    for done, refined in pool.submit(crf_refine, crf_args, tag=shown):
                        draw(done, refined)
                else:
                    draw(shown)
            for done, refined in pool.finish():
                draw(done, refined)


def show(work_dir, source, shown, *refined):
    """image | prediction (| the CRF's) | ground truth (when the split has it) ->
    vis/segmentation/<name>.jpg; nothing when ``shown`` is None (an image past --visualize)."""
    if shown is None:
        return
    name, image, labels = shown
    mask = source.mask_path(name)
    truth = [read_label_png(mask)] if mask is not None else []
    write_image(work_dir / "vis" / "segmentation" / f"{name}.jpg", label_panel(image, labels, *refined, *truth))


if __name__ == "__main__":
    stage.run_stage(main)
