"""The plain CAM classifier (docs/method.md §5.1, §5.10): a ResNet whose 1x1 classifier on ``layer4``
gives the class activation maps; PSA's classifier, and the base of SIPE's.  On PSA's
ResNet-38 and VGG-16 (docs/method.md §4.1) it is PSA's network as published."""
import torch
import torch.nn.functional as F
from torch import nn

from net.backbone import build_backbone, freeze, frozen_default, stage_channels, stage_modules, stage_outputs
from net.parameters import layer_groups, psa_groups
from net.psa_backbones import DROPOUT, PSA_BACKBONES, build_psa_backbone
from net.precision import full_precision
from tools.cam_maps import ScaleMaps

# stem, layer1, layer2 (EfficientNet-Lite: the stem and block groups 1-3, the same stride 8): the
# published forward is detached after layer2 (docs/method.md §4)
FROZEN_STAGES = 3


class CAMNet(nn.Module):
    """ResNet classifier: a bias-free 1x1 conv (layer4's width -> C-1) on ``x4`` is the CAM, its
    global average the image score (docs/method.md §5.1).

    ``pretrained`` names the initial weights; ``frozen`` (None: with weights, not without) is
    the published recipe's: the stem, ``layer1`` and ``layer2`` frozen and run without
    autograd, and BatchNorm keeping its statistics; not frozen, every layer trains.
    """

    method = "cam"

    def __init__(self, num_classes, pretrained="imagenet", backbone="resnet50", frozen=None):
        super().__init__()
        self.frozen = frozen_default(frozen, pretrained)
        self.psa_backbone = backbone in PSA_BACKBONES
        self.dropout = None
        if self.psa_backbone:  # PSA freezes its own layers (net/resnet38.py, net/vgg16.py); dropout before fc8
            self.backbone = build_psa_backbone(backbone, pretrained, self.frozen)
            self.frozen_stages = 0
            self.dropout = nn.Dropout2d(DROPOUT)
            width = self.backbone.level_channels[-1]
        else:
            self.backbone = build_backbone(backbone, pretrained, frozen_statistics=self.frozen)
            self.frozen_stages = FROZEN_STAGES if self.frozen else 0
            if self.frozen_stages:
                freeze(*stage_modules(self.backbone)[:self.frozen_stages])
            width = stage_channels(backbone)[-1]
        self.classifier = nn.Conv2d(width, num_classes - 1, 1, bias=False)

    def new_layers(self):
        return [self.classifier]

    def param_groups(self):
        """The backbone and the new layers (docs/method.md §5.8, §5.10); PSA's four groups on
        its backbones."""
        if self.psa_backbone:
            return psa_groups([self.backbone], self.new_layers())
        return layer_groups([self.backbone], self.new_layers())

    def stages(self, images):
        """The backbone's stage outputs (stem, x1..x4), the frozen ones without autograd; on
        PSA's backbones its three feature levels."""
        if self.psa_backbone:
            return list(self.backbone(images))
        return stage_outputs(self.backbone, images, self.frozen_stages)

    def raw_cam(self, images):
        """Raw CAM [N, C-1, h, w] (docs/method.md §5.1)."""
        features = self.stages(images)[-1]
        return self.classifier(features if self.dropout is None else self.dropout(features))

    def cam(self, images):
        """The CAM of PSA's inference: ``relu(raw CAM)`` in full precision, and its square root
        on VGG-16, as PSA's ``forward_cam``."""
        cam = F.relu(full_precision(self.raw_cam(images)))
        return cam.sqrt() if self.psa_backbone and self.backbone.cam_sqrt else cam

    def forward(self, images, labels, valid_pixels=None):
        """Training pass: the classification loss (multilabel soft margin) and the scores."""
        score = self.raw_cam(images).mean(dim=(2, 3))
        return {"cls_loss": F.multilabel_soft_margin_loss(score, labels), "score": score}


@torch.no_grad()
def psa_cam(model, scaled_images, keys, size):
    """PSA's inference (docs/method.md §5.10) for one image: at each scale, for the image and its flip,
    the relu'd CAM (``CAMNet.cam``) of the image's classes, flip undone and summed; ``ScaleMaps.fused``
    resizes each scale to ``size`` (bilinear, align_corners=False), sums them, divides each
    channel by its max + 1e-5 and puts the background ``1 - max`` first.  scaled_images:
    [1,3,h,w] normalised tensors; keys int64 [K] (0 first).  Returns the ScaleMaps of [K, H, W]."""
    scales = []
    for scaled in scaled_images:
        cam = model.cam(torch.cat([scaled, scaled.flip(-1)]))[:, keys[1:] - 1]
        scales.append(cam[0] + cam[1].flip(-1))
    return ScaleMaps(scales, tuple(size), background=True)
