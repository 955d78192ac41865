"""Stage 0 (toy run): pretrain a torchvision ResNet on the generated classification corpus
(data/corpus.py), the toy run's stand-in for ImageNet weights -> ckpt/pretrain.pth.

A real run skips this step and starts from ImageNet (``--pretrained imagenet``).
"""
from data.datasets import ClassificationDataset
from data.sources import build_source
from data.transforms import TrainTransform
from engine import stage
from engine.train import PolySchedule, add_augmentation_args, add_training_args, build_optimizer, epoch_steps, train
from net.backbone import BACKBONES
from net.classifier import ImageClassifier, classification_loss
from tools.io import PipelineError


def parse_args(argv=None):
    parser = stage.parser_for(__doc__)
    stage.add_dataset_args(parser, split_default="train")
    stage.add_runtime_args(parser)
    parser.add_argument("--backbone", choices=BACKBONES, help="torchvision ResNet")
    add_training_args(parser)
    add_augmentation_args(parser)
    stage.recipe_defaults(parser, argv, "pretrain")
    args = parser.parse_args(argv)
    if args.pretrained != "none":
        parser.error("pretrain.py trains from random initialisation: --pretrained must be none")
    return args


def check_single_labels(source, split):
    """The softmax needs one class per image (as the corpus has): another count is an error."""
    for image_id in source.ids(split):
        classes = source.labels(image_id)
        if len(classes) != 1:
            raise PipelineError(f"{source.image_path(image_id)}: {len(classes)} classes; pretrain.py trains a "
                                "softmax classifier on images of one class each")


def main(argv=None):
    args = parse_args(argv)
    with stage.opened(args, "pretrain", seed=args.seed) as (info, work_dir):
        source = build_source(args.dataset, args.data_root)
        source.check_split(args.split)
        check_single_labels(source, args.split)
        transform = TrainTransform(args.resize_long, args.crop_size, color_jitter=args.color_jitter)
        dataset = ClassificationDataset(source, args.split, transform, seed=args.seed)
        model = ImageClassifier(source.num_classes - 1, args.backbone).to(info.device)
        # SGD with momentum, poly decay: the recipe above
        optimizer = build_optimizer(model, args.lr, args.new_layer_lr_mult, args.weight_decay, args.momentum)
        schedule = PolySchedule(optimizer, epoch_steps(dataset, args.batch_size, args.epochs))
        meta = {"kind": "pretrain", "backbone": args.backbone, "num_classes": source.num_classes}
        train(model, dataset, classification_loss, optimizer, schedule, args, info, work_dir, "pretrain", meta,
              clip_grad=args.clip_grad)


if __name__ == "__main__":
    stage.run_stage(main)
