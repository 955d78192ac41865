"""Stage 1: train the classifier: SIPE, AE-SIPE or PSA's plain CAM (docs/method.md §5, §5.10, §6) -> ckpt/cam.pth."""
from data.datasets import ClassificationDataset
from data.sources import build_source
from data.transforms import TrainTransform
from engine import stage
from engine.train import (PolySchedule, add_augmentation_args, add_frozen_arg, add_training_args, build_optimizer,
                          check_frozen, epoch_steps, train)
from net.backbone import BACKBONES
from net.psa_backbones import PSA_BACKBONES
from net.sipe import METHODS, PROTOTYPE_METHODS, build_classifier, classifier_losses, prototype_backbone_error
from tools import flags


def parse_args(argv=None):
    parser = stage.parser_for(__doc__)
    stage.add_dataset_args(parser, split_default="train_aug")
    stage.add_runtime_args(parser)
    parser.add_argument("--method", choices=METHODS, default="sipe",
                        help="sipe, ae_sipe (PAMR-refined seeds) or cam (PSA's plain CAM classifier, no prototypes)")
    parser.add_argument("--backbone", choices=BACKBONES + PSA_BACKBONES,
                        help="torchvision ResNet (docs/method.md §4), or PSA's resnet38 / vgg16 "
                             "(--method cam; docs/psa.md)")
    parser.add_argument("--seed-bg-scale", type=flags.positive_float, default=0.5,
                        help="sipe, ae_sipe: the factor on the background's IoU in the structure seeds (docs/method.md §5.4); "
                             "it travels in the checkpoint to make_cam")
    add_training_args(parser)
    add_frozen_arg(parser)
    add_augmentation_args(parser)
    stage.recipe_defaults(parser, argv, "train_cam")
    args = parser.parse_args(argv)
    check_frozen(parser, args)
    if args.method in PROTOTYPE_METHODS and args.backbone in PSA_BACKBONES:
        parser.error(prototype_backbone_error(args.method, args.backbone))
    return args


def main(argv=None):
    args = parse_args(argv)
    with stage.opened(args, "train_cam", seed=args.seed) as (info, work_dir):
        source = build_source(args.dataset, args.data_root)
        source.check_split(args.split)
        transform = TrainTransform(args.resize_long, args.crop_size, color_jitter=args.color_jitter)
        dataset = ClassificationDataset(source, args.split, transform, seed=args.seed)
        model = build_classifier(source.num_classes, args.method, args.pretrained, args.backbone,
                                 args.seed_bg_scale, args.frozen).to(info.device)
        # SGD: the backbone at --lr, the new layers at --lr x --new-layer-lr-mult; poly decay (docs/method.md §5.8)
        optimizer = build_optimizer(model, args.lr, args.new_layer_lr_mult, args.weight_decay, args.momentum)
        schedule = PolySchedule(optimizer, epoch_steps(dataset, args.batch_size, args.epochs))
        meta = {"kind": "cam", "method": args.method, "backbone": args.backbone, "num_classes": source.num_classes,
                "seed_bg_scale": args.seed_bg_scale, "frozen": model.frozen}
        # the classification loss (+ SIPE's GSC loss), the gradient norm clipped at --clip-grad
        train(model, dataset, classifier_losses, optimizer, schedule, args, info, work_dir, "cam", meta,
              clip_grad=args.clip_grad, data=stage.data_inputs(source, args.split, info, work_dir))


if __name__ == "__main__":
    stage.run_stage(main)
