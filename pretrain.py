"""Stage 0 (toy run): pretrain a torchvision ResNet on the generated classification corpus
(data/corpus.py), the toy run's stand-in for ImageNet weights -> ckpt/pretrain.pth.

A real run skips this step and starts from ImageNet (``--pretrained imagenet``).
"""
from data.datasets import ClassificationDataset
from data.sources import build_source
from data.transforms import TrainTransform
from engine import stage
from engine.train import add_augmentation_args, add_training_args, train
from net.backbone import BACKBONES
from net.classifier import ImageClassifier, classification_loss

# ImageNet's recipe scaled to a CPU: SGD with momentum 0.9, weight decay 1e-4, every layer
# from random initialisation; lr 0.1 per 256 images (the linear scaling rule) at batch 64.
RECIPE = {"pretrained": "none", "epochs": 3, "crop_size": 112, "resize_long": (96, 160), "color_jitter": (0.3, 0.3, 0.3, 0.1)}


def parse_args(argv=None):
    parser = stage.parser_for(__doc__)
    stage.add_dataset_args(parser, split_default="train")
    stage.add_runtime_args(parser)
    parser.add_argument("--backbone", choices=BACKBONES, default="resnet18", help="torchvision ResNet")
    add_training_args(parser, batch_size=64, epochs=None, lr=0.025, crop_size=None, new_layer_lr_mult=1.0,
                      momentum=0.9)
    add_augmentation_args(parser)
    parser.set_defaults(**RECIPE)
    args = parser.parse_args(argv)
    if args.pretrained != "none":
        parser.error("pretrain.py trains from random initialisation: --pretrained must be none")
    return args


def main(argv=None):
    args = parse_args(argv)
    with stage.opened(args, "pretrain", seed=args.seed) as (info, work_dir):
        source = build_source(args.dataset, args.data_root)
        source.check_split(args.split)
        transform = TrainTransform(args.resize_long, args.crop_size, color_jitter=args.color_jitter)
        dataset = ClassificationDataset(source, args.split, transform, seed=args.seed)
        model = ImageClassifier(source.num_classes - 1, args.backbone)
        meta = {"kind": "pretrain", "backbone": args.backbone, "num_classes": source.num_classes}
        train(model.to(info.device), dataset, classification_loss, args, info, work_dir, "pretrain", meta)


if __name__ == "__main__":
    stage.run_stage(main)
