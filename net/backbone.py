"""ResNet-50 backbone at output stride 16 (SPEC 4).

The architecture and parameter names are those of torchvision's ``resnet50`` so that its
``IMAGENET1K_V1`` weights load unchanged; it is defined here because the torchvision
wheels do not import against the CPU build of torch (README, "Backbone").
"""
from pathlib import Path

import torch
from torch import nn

from tools.io import PipelineError

IMAGENET_WEIGHTS_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
IMAGENET_WEIGHTS_FILE = IMAGENET_WEIGHTS_URL.rsplit("/", 1)[1]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels, width, stride=1, downsample=None):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _make_layer(in_channels, width, blocks, stride):
    out_channels = width * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_channels))
    layers = [Bottleneck(in_channels, width, stride, downsample)]
    layers += [Bottleneck(out_channels, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50(nn.Module):
    """ResNet-50 returning the outputs of layer1..layer4 (strides 4, 8, 16, 16).

    ``frozen_bn``: BatchNorm keeps its running statistics in training too, and the stem
    (``conv1``, ``bn1``) does not train (SPEC 4, with ImageNet weights).
    """

    channels = (256, 512, 1024, 2048)

    def __init__(self, frozen_bn=True):
        super().__init__()
        self.frozen_bn = frozen_bn
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _make_layer(64, 64, 3, 1)
        self.layer2 = _make_layer(256, 128, 4, 2)
        self.layer3 = _make_layer(512, 256, 6, 2)
        self.layer4 = _make_layer(1024, 512, 3, 1)  # stride 1, no dilation: output stride 16
        if frozen_bn:
            for param in (*self.conv1.parameters(), *self.bn1.parameters()):
                param.requires_grad_(False)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return x1, x2, x3, x4

    def train(self, mode=True):
        super().train(mode)
        if self.frozen_bn:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def stages(self):
        """The five stages (stem, layer1..4), for heads that tap all of them (IRN)."""
        return (nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool),
                self.layer1, self.layer2, self.layer3, self.layer4)


def resolve_weights(pretrained):
    """Path of the weights for ``--pretrained`` (``imagenet``, ``none`` or a file); None for none."""
    if pretrained == "none":
        return None
    if pretrained == "imagenet":
        path = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_WEIGHTS_FILE
        if not path.is_file():
            raise PipelineError(
                f"{path}: ImageNet weights not found (offline). Download {IMAGENET_WEIGHTS_URL} "
                f"to that path, or pass --pretrained /path/to/{IMAGENET_WEIGHTS_FILE}")
        return path
    path = Path(pretrained)
    if not path.is_file():
        raise PipelineError(f"{path}: weights file not found (--pretrained takes imagenet, none or a path)")
    return path


def backbone_state(state):
    """The ResNet-50 parameters of a weights file: torchvision's (``fc`` dropped), or the
    backbone of one of this pipeline's checkpoints (``{"model": {"backbone.*": ...}}``)."""
    if not isinstance(state, dict):
        return {}
    if isinstance(state.get("model"), dict):
        prefix = "backbone."
        return {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def resnet50(pretrained="imagenet"):
    """The backbone with ``--pretrained`` weights; without weights BatchNorm trains normally."""
    path = resolve_weights(pretrained)
    model = ResNet50(frozen_bn=path is not None)
    if path is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise PipelineError(f"{path}: cannot read weights ({exc})") from exc
        state = backbone_state(state)
        expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        wrong = sorted(k for k in expected if k not in state or getattr(state[k], "shape", None) != expected[k])
        if wrong:
            raise PipelineError(f"{path}: not ResNet-50 weights ({len(wrong)} parameters missing or of "
                                f"another shape, e.g. {wrong[0]})")
        model.load_state_dict(state, strict=False)
    return model
