"""Stage 7: train the segmentation network (DeepLab-v2 or -v3, docs/method.md §13) on the pseudo-labels
-> ckpt/seg.pth; with --ground-truth on the dataset's masks, the fully supervised reference."""
from pathlib import Path

from data.datasets import LabelMapDataset
from data.sources import build_source, check_label_maps
from data.transforms import TrainTransform
from engine import stage
from engine.train import PolySchedule, add_frozen_arg, add_training_args, build_optimizer, check_frozen, train
from net.backbone import BACKBONES
from net.segmentation import ARCHS, build_segmentation_net, pixel_losses
from tools import flags
from tools.io import PipelineError

log = stage.log


def parse_args(argv=None):
    parser = stage.parser_for(__doc__)
    stage.add_dataset_args(parser, split_default="train_aug")
    stage.add_runtime_args(parser)
    parser.add_argument("--arch", choices=ARCHS, default="deeplabv2",
                        help="deeplabv2 (ASPP 6/12/18/24 summed, the papers' standard) or deeplabv3")
    parser.add_argument("--backbone", choices=BACKBONES, help="torchvision ResNet, stride 8")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--label-dir", help="pseudo-labels to learn from, 255 ignored "
                                            "(default: WORK_DIR/pseudo_labels, stage 6's)")
    labels.add_argument("--ground-truth", action="store_true",
                        help="learn from the dataset's ground-truth masks instead: the fully supervised network "
                             "that the pseudo-labels' network is read against (every training image needs a mask)")
    parser.add_argument("--scale-range", type=flags.positive_float, nargs=2, metavar=("LO", "HI"),
                        action=flags.OrderedPair,
                        help="random rescale of the image (bicubic) and its labels (nearest)")
    add_training_args(parser, steps="iterations")
    add_frozen_arg(parser)
    stage.recipe_defaults(parser, argv, "train_seg")
    args = parser.parse_args(argv)
    check_frozen(parser, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    with stage.opened(args, "train_seg", seed=args.seed) as (info, work_dir):
        if args.arch == "deeplabv3" and args.batch_size < 2 * info.world_size:
            raise PipelineError("--arch deeplabv3 trains BatchNorm on its image-pooling branch, which needs at "
                                f"least 2 images per process: --batch-size {args.batch_size} over {info.world_size} "
                                "processes")
        source = build_source(args.dataset, args.data_root)
        label_dir = None if args.ground_truth else Path(args.label_dir or work_dir / "pseudo_labels")
        log.info("checking the label maps of %s in %s", args.split, label_dir or "the ground truth")
        check_label_maps(source, args.split, label_dir)
        transform = TrainTransform(None, args.crop_size, scale_range=args.scale_range)
        dataset = LabelMapDataset(source, args.split, label_dir, transform, seed=args.seed)
        model = build_segmentation_net(args.arch, source.num_classes, args.backbone, args.pretrained,
                                       args.frozen).to(info.device)
        # SGD with momentum, the head at 10x; poly decay over --iterations (docs/method.md §13)
        optimizer = build_optimizer(model, args.lr, args.new_layer_lr_mult, args.weight_decay, args.momentum)
        schedule = PolySchedule(optimizer, args.iterations)
        meta = {"kind": "seg", "arch": args.arch, "backbone": args.backbone, "num_classes": source.num_classes,
                "frozen": model.frozen}
        train(model, dataset, pixel_losses, optimizer, schedule, args, info, work_dir, "seg", meta, label_dir,
              clip_grad=args.clip_grad, data=stage.data_inputs(source, args.split, info, work_dir, labels=False))


if __name__ == "__main__":
    stage.run_stage(main)
