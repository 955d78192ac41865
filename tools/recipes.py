"""Every recipe in one table (docs/stages.md, Recipes): the settings each stage trains and infers with.

``PUBLISHED[stage][choice]``: the published code's settings for each value of the flag that
chooses among them (``CHOOSERS``: train_cam's ``--method``, train_affinity's ``--arch``; a
stage without one has the single choice ``""``): SIPE's and PSA's classifiers (docs/method.md §5.8,
§5.10), IRN's and PSA's affinity networks (docs/method.md §9), DeepLab (docs/method.md §13), the inference scales
(docs/method.md §5.9, §13).

``TOY[stage]``: the toy run's CPU sizes, which ``--recipe toy`` lays over the published
values (docs/toy.md), and ``TOY_CHOICES[stage][choice]`` over those for one choice;
every setting the toy does not name is the published one.

The stages take these as their argparse defaults (``engine.stage.recipe_defaults``), so
``--help`` shows the chosen recipe's values and a flag on the command line overrides them.

``FROM_INPUTS``: the defaults that follow from what made a stage's inputs, read when the
stage knows them: the method a CAM file records (docs/method.md §6.4, §8: ``bg_scale`` scores the final
map, ``bg_conf_scale`` makes stage 4's confident background) and the architecture an affinity
checkpoint records (docs/method.md §10: the walk's ``beta``).

``python -m tools.recipes STAGE --flag=FLAG --value=VALUE`` checks a driver's choice against this table
(``main``), so that the drivers hold no list of methods or architectures of their own.
"""
import argparse
import sys

RECIPE_NAMES = ("published", "toy")

SIPE = {"backbone": "resnet50", "frozen": True, "batch_size": 16, "epochs": 5, "lr": 0.1,
        "new_layer_lr_mult": 10.0, "momentum": 0.0, "weight_decay": 1e-4, "clip_grad": 1.0, "crop_size": 512,
        "resize_long": (320, 640), "color_jitter": None}
PSA_JITTER = (0.3, 0.3, 0.3, 0.1)  # brightness, contrast, saturation, hue (docs/method.md §5.10, §9)

PUBLISHED = {
    # PSA's optimizer, like SIPE's, ran SGD without momentum (its poly power sat in the momentum slot)
    "train_cam": {"sipe": SIPE, "ae_sipe": SIPE,
                  "cam": {**SIPE, "epochs": 15, "crop_size": 448, "resize_long": (256, 512), "weight_decay": 5e-4,
                          "clip_grad": 0.0, "color_jitter": PSA_JITTER}},
    "make_cam": {"": {"scales": (1.0, 0.5, 1.5, 2.0)}},
    "eval_cam": {"": {}},
    "make_affinity_labels": {"": {}},
    # PSA trains AffinityNet on the image as it is (no resize) with colour jitter; IRN trains
    # its pairs at radius 10 on images rescaled by 0.5-1.5; the walk of stage 6 is at radius 5
    "train_affinity": {
        "irn": {"backbone": "resnet50", "frozen": True, "batch_size": 32, "epochs": 3, "lr": 0.1,
                "new_layer_lr_mult": 1.0, "momentum": 0.0, "weight_decay": 1e-4, "clip_grad": 0.0, "crop_size": 512,
                "radius": 10, "resize_long": None, "scale_range": (0.5, 1.5), "color_jitter": None},
        "affinitynet": {"backbone": "resnet50", "frozen": True, "batch_size": 8, "epochs": 8, "lr": 0.1,
                        "new_layer_lr_mult": 10.0, "momentum": 0.0, "weight_decay": 5e-4, "clip_grad": 0.0,
                        "crop_size": 448, "radius": 5, "resize_long": None, "scale_range": None,
                        "color_jitter": PSA_JITTER}},
    "make_seg_labels": {"": {}},
    # DeepLab-v2's VOC run: batch 10, crop 321, 20,000 iterations (COCO: 100,000)
    "train_seg": {"": {"backbone": "resnet101", "frozen": True, "batch_size": 10, "iterations": 20000,
                       "lr": 2.5e-4, "new_layer_lr_mult": 10.0, "momentum": 0.9, "weight_decay": 5e-4,
                       "clip_grad": 0.0, "crop_size": 321, "scale_range": (0.5, 1.5)}},
    "infer_seg": {"": {"scales": (0.5, 0.75, 1.0, 1.25, 1.5)}},
}

CHOOSERS = {"train_cam": "--method", "train_affinity": "--arch"}  # their defaults: the stages' own flags

# The toy run on a 2-core CPU: EfficientNet-Lite0 with its ImageNet weights (docs/method.md §4.1),
# images of 240-320 px, small crops and batches, few steps; two optimizer values, the affinity
# networks' (TOY_CHOICES).  Stage 7 keeps the published lr 2.5e-4: on ImageNet features its 80
# steps learn at it, and the 10x that the earlier stand-in backbone needed diverges (docs/toy.md).
# Channels-last (the same numbers) runs EfficientNet's depthwise convolutions 1.5-2x faster on a CPU.
_CPU = {"device": "cpu", "num_workers": 1, "channels_last": True}
_TRAINING = {**_CPU, "backbone": "efficientnet_lite0", "batch_size": 8, "save_every": 50, "log_every": 10}
TOY = {
    "train_cam": {**_TRAINING, "crop_size": 256, "resize_long": (160, 320), "epochs": 8},
    "make_cam": _CPU,
    "eval_cam": {},
    "make_affinity_labels": {},
    "train_affinity": {**_TRAINING, "crop_size": 256, "epochs": 5},
    "make_seg_labels": _CPU,
    "train_seg": {**_TRAINING, "crop_size": 192, "iterations": 80},
    "infer_seg": {**_CPU, "scales": (0.75, 1.0, 1.25)},
}
# The affinity networks' lr on the toy grows with the steps it cuts: IRN's new boundary layers, alone on the frozen backbone, get 200 steps
# for VOC's 990 (train_aug, batch 32, 3 epochs) at lr 0.3, AffinityNet 100 for VOC's 10,582
# (batch 8, 8 epochs) at lr 1.0; each measured on the toy (docs/toy.md)
TOY_CHOICES = {"train_affinity": {"irn": {"epochs": 10, "lr": 0.3}, "affinitynet": {"lr": 1.0}}}

FROM_INPUTS = {
    "cam_method": {
        "cam": {"bg_scale": 1.0, "bg_conf_scale": 0.5},
        "sipe": {"bg_scale": 1.0, "bg_conf_scale": 0.5},
        "ae_sipe": {"bg_scale": 0.8, "bg_conf_scale": 0.8},
    },
    "affinity_arch": {"affinitynet": {"beta": 8}, "irn": {"beta": 10}},
}


def recipe(stage, name, choice):
    """The settings of ``stage`` under recipe ``name`` (RECIPE_NAMES) for ``choice`` (the
    value of the stage's chooser, ``""`` without one): argparse dest -> value."""
    settings = dict(PUBLISHED[stage][choice])
    if name == "toy":
        settings.update(TOY[stage])
        settings.update(TOY_CHOICES.get(stage, {}).get(choice, {}))
    return settings


def main(argv=None):
    """Exit 0 when ``--value`` is one of STAGE's choices in ``PUBLISHED`` (or of ``--or``), else
    one line ``error: FLAG must be ...`` and exit 2: the drivers' check of their ``--method``
    (train_cam's choices) and ``--affinity`` (train_affinity's, or none) before anything runs."""
    parser = argparse.ArgumentParser(prog="python -m tools.recipes", description=main.__doc__)
    parser.add_argument("stage", choices=sorted(CHOOSERS), help="the stage whose choices the value must be one of")
    parser.add_argument("--flag", required=True, help="the caller's name of the choice, for the error line")
    parser.add_argument("--value", required=True, help="the value to check (give it as --value=VALUE)")
    parser.add_argument("--or", dest="others", nargs="+", default=[], metavar="VALUE",
                        help="values the caller takes besides the stage's")
    args = parser.parse_args(argv)
    allowed = [*PUBLISHED[args.stage], *args.others]
    if args.value not in allowed:
        print(f"error: {args.flag} must be {', '.join(allowed[:-1])} or {allowed[-1]}, not {args.value!r}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
