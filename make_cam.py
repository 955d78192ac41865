"""Stage 2: multi-scale + flip inference of the classifier -> cam/<name>.npy (docs/method.md §2, §5.9, §5.10)."""
import functools
from pathlib import Path

import torch

from data.datasets import InferenceDataset, single
from data.sources import build_source
from data.transforms import LARGEST_CAM_SIDE
from engine import stage
from engine.checkpoint import load_checkpoint, load_weights
from net.psa_backbones import released_checkpoint
from net.sipe import METHODS, PROTOTYPE_METHODS, classifier_of, inference_maps
from tools import dist, flags, provenance
from tools.cam_files import save_cam
from tools.io import PipelineError, make_dir, write_image
from tools.visualize import cam_panel
from tools.workers import WorkerPool

log = stage.log


def parse_args(argv=None):
    parser = stage.parser_for(__doc__)
    stage.add_dataset_args(parser, split_default="train")
    stage.add_runtime_args(parser)
    parser.add_argument("--checkpoint", help="classifier weights (default: WORK_DIR/ckpt/cam.pth); PSA's released "
                                             "res38_cls.pth / vgg16_cls.pth load as they are")
    parser.add_argument("--out-dir", help="where the CAM files go (default: WORK_DIR/cam)")
    parser.add_argument("--scales", type=flags.positive_float, nargs="+", help="inference scales (docs/method.md §5.9)")
    parser.add_argument("--visualize", type=flags.non_negative_int, default=0, metavar="N",
                        help="write heat-map pictures (background, then each class) of the first N images to vis/cam/")
    parser.add_argument("--all-maps", action="store_true",
                        help="also store plain_cam and is_cam, for the ladder of eval_cam.py --map "
                             "(sipe and ae_sipe checkpoints: the plain CAM classifier has no prototype maps)")
    parser.add_argument("--write-workers", type=flags.non_negative_int,
                        help="processes that compress and write the CAM files while the network goes on (0: this "
                             "process; default: the CPUs of this process with CUDA, 0 on the CPU, where the network "
                             "is the slow part)")
    stage.add_overwrite_arg(parser)
    stage.recipe_defaults(parser, argv, "make_cam")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with stage.opened(args, "make_cam") as (info, work_dir):
        out_dir = make_dir(args.out_dir or work_dir / "cam")
        source = build_source(args.dataset, args.data_root)
        source.check_split(args.split)
        path = Path(args.checkpoint or work_dir / "ckpt" / "cam.pth")
        checkpoint = load_checkpoint(path, {"kind": "cam", "num_classes": source.num_classes},
                                     foreign=released_checkpoint)
        method = checkpoint.get("method")
        if method not in METHODS:
            raise PipelineError(f"{path}: checkpoint of an unknown method {method!r} (known: {', '.join(METHODS)})")
        if args.all_maps and method not in PROTOTYPE_METHODS:
            raise PipelineError(f"{path}: a plain CAM classifier (--method {method}) has no prototype maps; "
                                "--all-maps needs a sipe or ae_sipe checkpoint")
        model = classifier_of(checkpoint, source.num_classes)
        load_weights(model, checkpoint["model"], path)
        model = stage.inference_model(model, info.device, args.channels_last)

        stage.check_class_names(checkpoint, path, source)
        sha, described = provenance.checkpoint_input(path, checkpoint)
        data = stage.data_inputs(source, args.split, info, work_dir)
        record = provenance.make_record("make_cam", {"checkpoint": sha, **data}, provenance.settings(args), [described],
                                        data_split=args.split)
        stage.claim_outputs([out_dir], record, info, args.overwrite, ".npy")
        names = source.ids(args.split)
        todo = stage.images_to_do(names, info, lambda n: [out_dir / f"{n}.npy"])
        log.info("%s: %d of %d images to do on rank %d", out_dir, len(todo), len(names), info.rank)
        loader = stage.loader(InferenceDataset(source, args.split, ids=todo, scales=args.scales,
                                               largest_side=LARGEST_CAM_SIDE), info,
                              args.num_workers, batch_size=1, collate_fn=single)
        if args.write_workers is None:
            args.write_workers = dist.cpus_per_process() if info.device.type == "cuda" else 0
            stage.save_flags(args, "make_cam", info.is_main)
        # compressing and writing the maps takes 3-7 ms an image (docs/cam-files.md): beside the network on a GPU
        with WorkerPool(args.write_workers if todo else 0, "CAM writing", writes_to=[out_dir]) as pool:
            for index, item in enumerate(stage.progress(loader, info.is_main, total=len(todo), desc="make_cam")):
                if max(item["image"].shape[:2]) > LARGEST_CAM_SIDE:
                    log.info("%s: %d x %d px, seen as if its longer side were %d px (make_cam's largest side), "
                             "its maps resized to the image", item["name"], item["image"].shape[1],
                             item["image"].shape[0], LARGEST_CAM_SIDE)
                images = [scaled.to(info.device, non_blocking=True) for scaled in item["scaled"]]
                keys = torch.as_tensor(item["keys"], device=info.device)
                with stage.autocast(info.device, args.amp):
                    maps = inference_maps(model, images, keys, item["image"].shape[:2])
                maps = {name: value.numpy() for name, value in maps.items()}
                extra = {name: maps[name] for name in ("plain_cam", "is_cam")} if args.all_maps else {}
                write = functools.partial(save_cam, out_dir / f"{item['name']}.npy", item["keys"], maps["cam"],
                                          method=method, num_classes=source.num_classes, made_by=record["digest"],
                                          **extra)
                pool.submit(write, ())
                if index < args.visualize:
                    write_image(work_dir / "vis" / "cam" / f"{item['name']}.jpg",
                                cam_panel(item["image"], maps["cam"].fused().numpy()))
            pool.finish()


if __name__ == "__main__":
    stage.run_stage(main)
