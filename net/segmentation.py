"""The segmentation network of stage 7 (docs/method.md §13): DeepLab-v2 or -v3 on torchvision's ResNet
at output stride 8."""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from net.backbone import build_backbone, freeze, frozen_default, stage_channels, stage_outputs
from net.parameters import layer_groups

ARCHS = ("deeplabv2", "deeplabv3")
ASPP_DILATIONS = (6, 12, 18, 24)


class ASPPv2(nn.Module):
    """DeepLab-v2's ASPP: one 3x3 conv with bias per dilation, straight to the classes, the
    outputs summed (docs/method.md §13).  Weights N(0, 0.01), biases 0, as the published DeepLab-v2."""

    def __init__(self, in_channels, num_classes, dilations=ASPP_DILATIONS):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True)
                                   for d in dilations)
        for conv in self.convs:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        return sum(conv(x) for conv in self.convs)


class DeepLab(nn.Module):
    """DeepLab on a ResNet at output stride 8; ``forward(images)`` -> logits [N,C,H,W] at the
    input size (bilinear).  ``frozen`` (None: with weights, not without): DeepLab-v2 keeps
    BatchNorm frozen (statistics and affine parameters); DeepLab-v3 trains it either way
    (torchvision's head), its statistics kept when frozen."""

    def __init__(self, arch, num_classes, backbone="resnet101", pretrained="imagenet", frozen=None):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown segmentation architecture {arch!r} (choose from {', '.join(ARCHS)})")
        self.arch = arch
        self.frozen = frozen_default(frozen, pretrained)
        self.backbone = build_backbone(backbone, pretrained, output_stride=8, frozen_statistics=self.frozen)
        if arch == "deeplabv2" and self.frozen:
            freeze(*(m for m in self.backbone.modules() if isinstance(m, nn.BatchNorm2d)))
        self.head = (ASPPv2 if arch == "deeplabv2" else DeepLabHead)(stage_channels(backbone)[-1], num_classes)

    def param_groups(self):
        """(backbone, head) parameters that train: lr and 10x lr (docs/method.md §13)."""
        return layer_groups([self.backbone], [self.head])

    def forward(self, images):
        features = stage_outputs(self.backbone, images)[-1]
        logits = self.head(features)
        return F.interpolate(logits, images.shape[-2:], mode="bilinear", align_corners=False)


def build_segmentation_net(arch, num_classes, backbone="resnet101", pretrained="imagenet", frozen=None):
    """DeepLab-v2 or -v3 of docs/method.md §13 (``arch``: deeplabv2 or deeplabv3)."""
    return DeepLab(arch, num_classes, backbone, pretrained, frozen)


def segmentation_net_of(checkpoint, num_classes):
    """The segmentation network a stage-7 checkpoint holds (without its weights), of the
    architecture, backbone and freezing it trained with."""
    return build_segmentation_net(checkpoint["arch"], num_classes, checkpoint["backbone"], pretrained="none",
                                  frozen=checkpoint.get("frozen", True))


@torch.no_grad()
def multiscale_probs(model, scaled_images, size):
    """Multi-scale + flip inference (docs/method.md §13): the logits of each scale and of its flip
    resized (bilinear) to ``size``, their softmax averaged.  scaled_images: normalised
    [1,3,h,w] tensors; returns float32 [C,H,W] probabilities."""
    total = 0
    for image in scaled_images:
        logits = model(torch.cat([image, image.flip(-1)])).float()
        probs = F.interpolate(logits, tuple(size), mode="bilinear", align_corners=False).softmax(dim=1)
        total = total + probs[0] + probs[1].flip(-1)
    return total / (2 * len(scaled_images))


def segmentation_loss(logits, labels, ignore_index=255):
    """Cross-entropy over the labelled pixels (docs/method.md §13): ``ignore_index`` pixels count for
    nothing, and a batch with none labelled gives 0 rather than NaN."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)


def pixel_losses(model, batch):
    """The loss of one batch: cross-entropy of the logits against the labels, 255 ignored."""
    return {"ce": segmentation_loss(model(batch["image"]), batch["labels"])}
