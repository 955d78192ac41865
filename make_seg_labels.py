"""Stage 6: random walk of the CAMs over the learned affinities (docs/method.md §10), optionally
refined by the dense CRF (docs/method.md §8) -> pseudo_labels/<name>.png (and pseudo_labels_crf/)."""
import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.datasets import CamDataset, single
from data.sources import build_source
from engine import stage
from engine.checkpoint import load_checkpoint, load_weights
from net.affinity import IRN_CROP, STRIDE, WALK_RADIUS, affinity_net_of, boundary_map, walk_affinitynet, walk_irn
from net.psa_backbones import PSA_BACKBONES, released_checkpoint
from tools import dist, flags, provenance
from tools.crf import crf_labels
from tools.io import read_image, write_image, write_label_png
from tools.methods import method_default
from tools.normalization import normalize
from tools.palette import voc_palette
from tools.recipes import FROM_INPUTS
from tools.visualize import label_panel
from tools.workers import WorkerPool

log = stage.log


def parse_args(argv=None):
    parser = stage.parser_for(__doc__)
    stage.add_dataset_args(parser, split_default="train")
    stage.add_runtime_args(parser)
    parser.add_argument("--checkpoint", help="affinity network (default: WORK_DIR/ckpt/affinity.pth); PSA's "
                                             "released res38_aff.pth / vgg16_aff.pth load as they are")
    parser.add_argument("--no-affinity", action="store_true",
                        help="no random walk: labels are the CAM argmax (background times --bg-scale), "
                             "to be refined with --crf; a baseline without an affinity network (the COCO route "
                             "uses stage 4's CRF labels instead)")
    parser.add_argument("--bg-scale", type=flags.positive_float,
                        help="--no-affinity: factor on the background (default: from the method the CAM files "
                             "record, tools/methods.py: 0.8 for AE-SIPE's cam map, else 1.0)")
    parser.add_argument("--cam-dir", help="CAM files of stage 2 (default: WORK_DIR/cam)")
    parser.add_argument("--map", default="cam", help="which map of the CAM files to propagate")
    parser.add_argument("--radius", type=flags.radius, default=WALK_RADIUS,
                        help="random-walk pairs within this radius, whatever radius the network trained at")
    parser.add_argument("--beta", type=flags.positive_float,
                        help="affinity power (default: 8 for affinitynet, 10 for irn)")
    parser.add_argument("--steps", type=flags.positive_int, default=256, help="random-walk steps t (2^8)")
    parser.add_argument("--alpha", type=flags.positive_float, default=16,
                        help="affinitynet: background (1 - max fg) ** alpha")
    parser.add_argument("--power", type=flags.positive_float, default=1.5, help="irn: the CAM is raised to this power")
    parser.add_argument("--crf", action="store_true", help="also write CRF-refined labels to pseudo_labels_crf/")
    parser.add_argument("--crf-workers", type=flags.non_negative_int, default=dist.cpus_per_process(),
                        help="CRF processes (0: this process); the default is the CPUs available, divided among "
                             "torchrun processes")
    parser.add_argument("--visualize", type=flags.non_negative_int, default=0, metavar="N",
                        help="write image | labels (| CRF labels) pictures of the first N images to vis/seg/")
    stage.add_overwrite_arg(parser)
    stage.recipe_defaults(parser, argv, "make_seg_labels")
    return parser.parse_args(argv)


def walk(model, checkpoint, image, cam, beta, args):
    """The random walk's label indices [H, W] of one image from its CAM [K, H, W] (docs/method.md §10).
    IRN's image is padded to the crop size its network trained at (512 as published)."""
    pixels = normalize(image)[None].to(cam.device)
    with torch.no_grad(), stage.autocast(cam.device, args.amp):
        if checkpoint["arch"] == "irn":
            boundary = boundary_map(model, pixels, checkpoint.get("crop_size", IRN_CROP))
            walked = walk_irn(boundary, cam, args.radius, beta, args.steps, args.power)
        elif checkpoint.get("backbone") in PSA_BACKBONES:  # PSA's padding to a multiple of 8, as PSA's inference
            walked = walk_affinitynet(model(pixels).float(), cam, args.radius, beta, args.steps, args.alpha, True)
            walked = F.interpolate(walked[None], scale_factor=STRIDE["affinitynet"], mode="bilinear",
                                   align_corners=False)[0, :, :image.shape[0], :image.shape[1]]
        else:
            walked = walk_affinitynet(model(pixels).float(), cam, args.radius, beta, args.steps, args.alpha)
            walked = F.interpolate(walked[None], image.shape[:2], mode="bilinear", align_corners=False)[0]
    return walked.argmax(dim=0)


def crf_refine(image_path, label_index, keys, out_path):
    """CRF-refined labels of one image (runs in a pool worker); returns them."""
    image = read_image(image_path)
    refined = keys[crf_labels(image, label_index, len(keys))]
    write_label_png(out_path, refined, voc_palette())
    return refined


def checkpoint_path(args, work_dir):
    return Path(args.checkpoint or work_dir / "ckpt" / "affinity.pth")


def load_affinity_net(args, work_dir, device):
    """The affinity network of stage 5 (``--checkpoint``, default ckpt/affinity.pth), ready
    for inference on ``device``; returns (checkpoint, model)."""
    path = checkpoint_path(args, work_dir)
    checkpoint = load_checkpoint(path, {"kind": "affinity"}, foreign=released_checkpoint)
    model = affinity_net_of(checkpoint)
    load_weights(model, checkpoint["model"], path)
    return checkpoint, stage.inference_model(model, device, args.channels_last)


def main(argv=None):
    args = parse_args(argv)
    with stage.opened(args, "make_seg_labels") as (info, work_dir):
        cam_dir = Path(args.cam_dir or work_dir / "cam")
        out_dirs = [work_dir / "pseudo_labels"] + ([work_dir / "pseudo_labels_crf"] if args.crf else [])
        source = build_source(args.dataset, args.data_root)
        names = source.ids(args.split)
        cams, checkpoints, made_by = stage.upstream_folder(cam_dir, "CAM files", source, info, work_dir)
        inputs = {"cams": cams, **stage.data_inputs(source, args.split, info, work_dir, labels=False)}
        checkpoint, model = (None, None) if args.no_affinity else load_affinity_net(args, work_dir, info.device)
        arch = checkpoint["arch"] if checkpoint else "none"
        if checkpoint:
            args.beta = args.beta if args.beta is not None else FROM_INPUTS["affinity_arch"][arch]["beta"]
            inputs["affinity"], described = provenance.checkpoint_input(checkpoint_path(args, work_dir), checkpoint)
            checkpoints = [described, *checkpoints]
        elif args.bg_scale is None:
            args.bg_scale = method_default("bg_scale", cam_dir / f"{names[0]}.npy", args.map)
        stage.save_flags(args, "make_seg_labels", info.is_main)
        record = provenance.make_record("make_seg_labels", inputs, provenance.settings(args), checkpoints,
                                        data_split=args.split)
        stage.claim_outputs(out_dirs, record, info, args.overwrite, ".png")
        todo = stage.images_to_do(names, info, lambda n: [d / f"{n}.png" for d in out_dirs])
        log.info("%s: %d of %d images to do on rank %d (%s, beta %s, t %d)", out_dirs[0], len(todo), len(names),
                 info.rank, arch, args.beta, args.steps)
        draw = functools.partial(show, work_dir)
        loader = stage.loader(CamDataset(source, todo, cam_dir, args.map, made_by), info, args.num_workers,
                              batch_size=1, collate_fn=single)
        with WorkerPool(args.crf_workers if args.crf and todo else 0, "CRF", writes_to=out_dirs[1:]) as pool:
            for index, item in enumerate(stage.progress(loader, info.is_main, total=len(todo),
                                                        desc="make_seg_labels")):
                name, image, keys, cam = item["name"], item["image"], item["keys"], item["cam"]
                if model is None:
                    cam[0] *= args.bg_scale
                    label_index = cam.argmax(axis=0)
                else:
                    label_index = walk(model, checkpoint, image, torch.from_numpy(cam).to(info.device), args.beta,
                                       args).cpu().numpy()
                labels = keys[label_index].astype(np.uint8)
                write_label_png(out_dirs[0] / f"{name}.png", labels, voc_palette())
                shown = (name, image, labels) if index < args.visualize else None
                if args.crf:
                    crf_args = (str(source.image_path(name)), label_index, keys, out_dirs[1] / f"{name}.png")
                    for done, refined in pool.submit(crf_refine, crf_args, tag=shown):
                        draw(done, refined)
                else:
                    draw(shown)
            for done, refined in pool.finish():
                draw(done, refined)


def show(work_dir, shown, *refined):
    """image | the walk's labels (| the CRF's) -> vis/seg/<name>.jpg; nothing when ``shown``
    is None (an image past --visualize)."""
    if shown is not None:
        name, image, labels = shown
        write_image(work_dir / "vis" / "seg" / f"{name}.jpg", label_panel(image, labels, *refined))


if __name__ == "__main__":
    stage.run_stage(main)
