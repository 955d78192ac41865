"""Stage 1: train the SIPE / AE-SIPE classifier (SPEC 5, 6) -> ckpt/cam.pth."""
from data.datasets import ClassificationDataset
from data.sources import build_source
from data.transforms import TrainTransform
from engine import stage
from engine.train import add_training_args, train
from net.backbone import BACKBONES
from net.sipe import METHODS, SIPENet, classifier_losses


def parse_args(argv=None):
    parser = stage.parser_for(__doc__)
    stage.add_dataset_args(parser, split_default="train_aug")
    stage.add_runtime_args(parser)
    parser.add_argument("--method", choices=METHODS, default="sipe", help="sipe, or ae_sipe (PAMR-refined seeds)")
    parser.add_argument("--backbone", choices=BACKBONES, default="resnet50", help="torchvision ResNet (SPEC 4)")
    parser.add_argument("--bg-scale", type=float, default=0.5, help="background IoU factor of the structure seeds")
    add_training_args(parser, batch_size=16, epochs=5, lr=0.1, crop_size=512, new_layer_lr_mult=10.0,
                      clip_grad=1.0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with stage.opened(args, "train_cam", seed=args.seed) as (info, work_dir):
        source = build_source(args.dataset, args.data_root)
        source.check_split(args.split)
        dataset = ClassificationDataset(source, args.split, TrainTransform(tuple(args.resize_long), args.crop_size),
                                        seed=args.seed)
        model = SIPENet(source.num_classes, args.method, args.pretrained, args.backbone, args.bg_scale).to(info.device)
        meta = {"kind": "cam", "method": args.method, "backbone": args.backbone, "num_classes": source.num_classes}
        train(model, dataset, classifier_losses, args, info, work_dir, "cam", meta)


if __name__ == "__main__":
    stage.run_stage(main)
