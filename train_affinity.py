"""Stage 5: train AffinityNet (PSA) or IRN's boundary network on affinity labels (docs/method.md §9)
-> ckpt/affinity.pth."""
from pathlib import Path

import torch
import torch.nn.functional as F

from data.datasets import LabelMapDataset
from data.sources import build_source
from data.transforms import TrainTransform
from engine import stage
from engine.train import (PolySchedule, add_augmentation_args, add_frozen_arg, add_training_args, build_optimizer,
                          check_frozen, epoch_steps, train, unwrap)
from net.affinity import ARCHS, STRIDE, affinity_losses, build_affinity_net
from net.backbone import BACKBONES
from net.psa_backbones import PSA_BACKBONES
from tools import flags
from tools.io import PipelineError
from tools.random_walk import affinity_labels, pairs_within_radius

# How the label maps reach the network's output size: PIL's nearest for IRN (docs/method.md §9).
LABEL_RESIZE = {"affinitynet": "nearest", "irn": "nearest-exact"}


def parse_args(argv=None):
    parser = stage.parser_for(__doc__)
    stage.add_dataset_args(parser, split_default="train_aug")
    stage.add_runtime_args(parser)
    parser.add_argument("--arch", choices=ARCHS, default="irn", help="irn (SIPE, AE-SIPE) or affinitynet (PSA)")
    parser.add_argument("--label-dir", help="affinity labels of stage 4 (default: WORK_DIR/affinity_labels)")
    parser.add_argument("--backbone", choices=BACKBONES + PSA_BACKBONES,
                        help="torchvision ResNet (docs/method.md §4), or PSA's resnet38 / vgg16 "
                             "(--arch affinitynet; docs/psa.md)")
    parser.add_argument("--radius", type=flags.radius, help="training pairs within this radius (docs/method.md §9)")
    parser.add_argument("--scale-range", type=flags.positive_float, nargs=2, metavar=("LO", "HI"),
                        action=flags.OrderedPair,
                        help="rescale the image by a factor in this range (IRN's augmentation; "
                             "replaces --resize-long)")
    add_training_args(parser)
    add_frozen_arg(parser)
    add_augmentation_args(parser)
    stage.recipe_defaults(parser, argv, "train_affinity")
    args = parser.parse_args(argv)
    if args.arch == "irn" and not args.frozen:
        parser.error("--no-frozen: IRN trains its boundary layers on a frozen backbone (docs/method.md §9); it has no other form")
    if args.arch == "irn" and args.backbone in PSA_BACKBONES:
        parser.error(f"--backbone {args.backbone}: IRN reads the five stages of a ResNet (docs/method.md §9); "
                     "PSA's backbones are for --arch affinitynet")
    if args.arch == "affinitynet":
        check_frozen(parser, args)
    return args


def pair_losses(radius, label_resize="nearest"):
    """The loss function of one batch: network output -> pair affinities against the pair
    labels of the label maps resized (``label_resize``) to the output size (docs/method.md §9)."""
    def losses(model, batch):
        output = model(batch["image"])
        affinity = unwrap(model).affinity_of(output, radius)
        labels = F.interpolate(batch["labels"][:, None].float(), output.shape[-2:], mode=label_resize)[:, 0].long()
        pair_labels = [torch.stack(affinity_labels(label_map, radius)) for label_map in labels]
        bg_pos, fg_pos, neg = torch.stack(pair_labels, dim=1)
        return affinity_losses(affinity, bg_pos, fg_pos, neg)
    return losses


def main(argv=None):
    args = parse_args(argv)
    with stage.opened(args, "train_affinity", seed=args.seed) as (info, work_dir):
        source = build_source(args.dataset, args.data_root)
        label_dir = Path(args.label_dir) if args.label_dir else work_dir / "affinity_labels"
        missing = [name for name in source.ids(args.split) if not (label_dir / f"{name}.png").is_file()]
        if missing:
            raise PipelineError(f"{label_dir}: no affinity labels for {len(missing)} images of {args.split} "
                                f"(e.g. {missing[0]}.png); run make_affinity_labels.py first")
        side = -(-args.crop_size // STRIDE[args.arch])
        if pairs_within_radius(args.radius, (side, side))[0].numel() == 0:
            raise PipelineError(f"--crop-size {args.crop_size}: the {side}x{side} map of {args.arch} at stride "
                                f"{STRIDE[args.arch]} has no pixel pairs within radius {args.radius}; "
                                "use a larger crop")
        transform = TrainTransform(args.resize_long, args.crop_size, scale_range=args.scale_range,
                                   color_jitter=args.color_jitter)
        dataset = LabelMapDataset(source, args.split, label_dir, transform, seed=args.seed)
        model = build_affinity_net(args.arch, args.pretrained, args.backbone, args.frozen).to(info.device)
        # SGD over the network's groups (PSA: four, docs/method.md §9; IRN: the boundary layers), poly decay
        optimizer = build_optimizer(model, args.lr, args.new_layer_lr_mult, args.weight_decay, args.momentum)
        schedule = PolySchedule(optimizer, epoch_steps(dataset, args.batch_size, args.epochs))
        meta = {"kind": "affinity", "arch": args.arch, "backbone": args.backbone, "radius": args.radius,
                "crop_size": args.crop_size, "frozen": model.frozen}
        train(model, dataset, pair_losses(args.radius, LABEL_RESIZE[args.arch]), optimizer, schedule, args, info,
              work_dir, "affinity", meta, label_dir, clip_grad=args.clip_grad,
              data=stage.data_inputs(source, args.split, info, work_dir, labels=False))


if __name__ == "__main__":
    stage.run_stage(main)
