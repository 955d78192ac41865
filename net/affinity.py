"""Inter-pixel affinity networks (docs/method.md §9): PSA's AffinityNet and IRN's boundary network."""
import torch
import torch.nn.functional as F
from torch import nn

from net.backbone import (build_backbone, freeze, frozen_default, input_conv, stage_channels, stage_outputs,
                          stage_strides, stem_channels)
from net.parameters import layer_groups, psa_groups
from net.precision import full_precision
from net.psa_backbones import AFFINITY_NORMS, PSA_BACKBONES, build_psa_backbone
from tools.random_walk import pairs_within_radius, path_max_affinity, propagate_with_boundary, random_walk

ARCHS = ("affinitynet", "irn")
STRIDE = {"affinitynet": 8, "irn": 4}
WALK_RADIUS = 5  # the random walk's pairs, whatever radius the network trained at (docs/method.md §10)
IRN_CROP = 512  # IRN inference pads the image to its training crop (docs/method.md §9)


class AffinityNet(nn.Module):
    """Stride-8 pixel embeddings; the affinity of a pair is ``exp(-mean_c |f_i - f_j|)``.

    On PSA's ResNet-38 and VGG-16 (docs/method.md §4.1) it is PSA's network: its side convs
    read the three stride-8 levels (VGG-16: each followed by GroupNorm, as PSA's), PSA freezes
    its own layers, and the input is zero-padded right and bottom to a multiple of 8 (after
    the backbone's own normalisation), as PSA's inference pads it.
    """

    def __init__(self, pretrained="imagenet", backbone="resnet50", frozen=None):
        super().__init__()
        self.frozen = frozen_default(frozen, pretrained)  # None: as PSA with weights, nothing without
        self.psa_backbone = backbone in PSA_BACKBONES
        self.side_norm = None
        if self.psa_backbone:
            self.backbone = build_psa_backbone(backbone, pretrained, self.frozen, role="affinity")
            widths = self.backbone.level_channels
            if AFFINITY_NORMS[backbone]:
                self.side_norm = nn.ModuleList(nn.GroupNorm(groups, width) for groups, width in
                                               zip(AFFINITY_NORMS[backbone], (64, 128, 256)))
        else:
            self.backbone = build_backbone(backbone, pretrained, frozen_statistics=self.frozen)
            if self.frozen:
                # as PSA: the first stage frozen, and every BatchNorm (statistics and affine)
                freeze(input_conv(self.backbone), *(m for m in self.backbone.modules() if isinstance(m, nn.BatchNorm2d)))
            widths = stage_channels(backbone)[1:]
        self.frozen_stages = 1 if self.frozen and not self.psa_backbone else 0  # the stem keeps its ImageNet weights
        self.side = nn.ModuleList(nn.Conv2d(cin, cout, 1, bias=False) for cin, cout in zip(widths, (64, 128, 256)))
        self.fuse = nn.Conv2d(448, 448, 1, bias=False)
        for conv in (*self.side, self.fuse):
            nn.init.kaiming_normal_(conv.weight)

    def param_groups(self):
        """PSA's four groups (docs/method.md §9): pretrained / new, weights / biases; PSA's GroupNorms
        (VGG-16) count as pretrained layers, as PSA sorts them."""
        return psa_groups([self.backbone, *([self.side_norm] if self.side_norm else [])], [self.side, self.fuse])

    def levels(self, images):
        """The three feature maps the side convs read: layer2..layer4, or PSA's levels."""
        if not self.psa_backbone:
            return stage_outputs(self.backbone, images, self.frozen_stages)[2:]
        x = self.backbone.prepare(images)
        height, width = x.shape[-2:]
        x = F.pad(x, (0, -width % STRIDE["affinitynet"], 0, -height % STRIDE["affinitynet"]))
        return self.backbone.levels(x)

    def forward(self, images):
        """Embeddings [N, 448, H/8, W/8] (rounded up)."""
        levels = self.levels(images)
        size = levels[0].shape[-2:]
        norms = self.side_norm or [nn.Identity()] * len(self.side)
        parts = [F.interpolate(F.elu(norm(side(x))), size, mode="bilinear", align_corners=False)
                 for side, norm, x in zip(self.side, norms, levels)]
        return F.elu(self.fuse(torch.cat(parts, dim=1)))

    @staticmethod
    def affinity_of(embeddings, radius=5):
        """Pair affinities [N, D, M] from the output of ``forward``."""
        return embedding_affinity(embeddings, radius)


def embedding_affinity(features, radius=5):
    """``a_ij = exp(-mean_c |f_i - f_j|)`` for the pairs of the feature map (docs/method.md §9)."""
    features = full_precision(features)
    n, c, h, w = features.shape
    index_from, index_to = pairs_within_radius(radius, (h, w), features.device)
    flat = features.flatten(2)
    source = flat[:, :, index_from].unsqueeze(2)  # [N, C, 1, M]
    target = flat[:, :, index_to]  # [N, C, D, M]
    return torch.exp(-(source - target).abs().mean(dim=1))


def edge_branch(width, stride):
    """One of IRN's per-stage edge branches for a stage at ``stride``: 1x1 conv to 32,
    GroupNorm(4, 32), the resampling to stride 4 (before the ReLU, as published: bilinear
    upsampling of the deeper stages, 2x2 average pooling of a stride-2 stem), ReLU."""
    layers = [nn.Conv2d(width, 32, 1, bias=False), nn.GroupNorm(4, 32)]
    if stride > 4:
        layers.append(nn.Upsample(scale_factor=stride // 4, mode="bilinear", align_corners=False))
    elif stride < 4:
        layers.append(nn.AvgPool2d(4 // stride, ceil_mode=True))
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


class BoundaryNet(nn.Module):
    """IRN's class-boundary branch: a stride-4 map B in [0, 1] from the five stages
    (stem, layer1..layer4) of a frozen backbone (docs/method.md §9)."""

    frozen = True  # the whole backbone, always (IRN trains its boundary layers alone)

    def __init__(self, pretrained="imagenet", backbone="resnet50"):
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained)
        freeze(self.backbone)
        self.branches = nn.ModuleList(edge_branch(width, stride) for width, stride in
                                      zip((stem_channels(backbone), *stage_channels(backbone)), stage_strides(backbone)))
        self.head = nn.Conv2d(32 * len(self.branches), 1, 1, bias=True)

    def param_groups(self):
        """Only the boundary layers train (docs/method.md §9)."""
        return layer_groups([], [self.branches, self.head])

    def train(self, mode=True):
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm statistics included
        return self

    def logits(self, images):
        """Boundary logits [N, 1, h, w] at the stride-4 size of ``x1``, before the sigmoid."""
        features = stage_outputs(self.backbone, images, detach_until=5)
        h, w = features[1].shape[-2:]
        parts = [branch(x)[..., :h, :w] for branch, x in zip(self.branches, features)]
        return self.head(torch.cat(parts, dim=1))

    def forward(self, images):
        """Boundary map B [N, 1, h, w] in [0, 1] (docs/method.md §9)."""
        return torch.sigmoid(self.logits(images))

    @staticmethod
    def affinity_of(boundary, radius=5):
        """Pair affinities [N, D, M] from the output of ``forward``: ``1 - max B`` along
        each pair's path (docs/method.md §9)."""
        return path_max_affinity(full_precision(boundary)[:, 0], radius)


def padded_size(length, crop_size=IRN_CROP):
    """The crop size, or the next multiple of 16 above a longer side (docs/method.md §9)."""
    return crop_size if length <= crop_size else -(-length // 16) * 16


@torch.no_grad()
def boundary_map(model, image, crop_size=IRN_CROP):
    """IRN inference (docs/method.md §9): image [1, 3, H, W] normalised -> B [ceil(H/4), ceil(W/4)].

    The image and its flip are zero-padded right and bottom to ``crop_size`` (as in
    training), their logits cropped, averaged (flip undone) and passed through the sigmoid.
    """
    height, width = image.shape[-2:]
    pair = torch.cat([image, image.flip(-1)])
    pair = F.pad(pair, (0, padded_size(width, crop_size) - width, 0, padded_size(height, crop_size) - height))
    logits = full_precision(model.logits(pair))[:, 0, :-(-height // 4), :-(-width // 4)]
    return torch.sigmoid((logits[0] + logits[1].flip(-1)) / 2)


def build_affinity_net(arch, pretrained="imagenet", backbone="resnet50", frozen=None):
    """AffinityNet (``frozen``: PSA's stem and BatchNorm; None: with weights) or IRN's
    BoundaryNet (its backbone always frozen)."""
    if arch == "affinitynet":
        return AffinityNet(pretrained, backbone, frozen)
    if arch == "irn":
        return BoundaryNet(pretrained, backbone)
    raise ValueError(f"arch must be one of {ARCHS}, not {arch!r}")


def affinity_net_of(checkpoint):
    """The affinity network a stage-5 checkpoint holds (without its weights), of the
    architecture, backbone and freezing it trained with."""
    return build_affinity_net(checkpoint["arch"], pretrained="none", backbone=checkpoint.get("backbone", "resnet50"),
                              frozen=checkpoint.get("frozen", True))


def _masked_mean(loss, mask):
    return (loss * mask).sum() / (mask.sum() + 1e-5)


def affinity_losses(affinity, bg_pos, fg_pos, neg):
    """docs/method.md §9 losses of pair affinities [N, D, M] against pair labels of the same shape.

    ``bg = -sum log(a + 1e-5) / count`` over background-positive pairs, ``fg`` likewise,
    ``neg = -sum log(1 + 1e-5 - a) / count`` over negative pairs.  AffinityNet's
    ``bg/4 + fg/4 + neg/2`` and IRN's ``((bg + fg)/2 + neg) / 2`` are the same sum.
    """
    affinity = full_precision(affinity)
    positive = -torch.log(affinity + 1e-5)
    return {"bg": _masked_mean(positive, bg_pos) / 4, "fg": _masked_mean(positive, fg_pos) / 4,
            "neg": _masked_mean(-torch.log(1 + 1e-5 - affinity), neg) / 2}


def walk_affinitynet(embeddings, cam, radius=5, beta=8, t=256, alpha=16, padded=False):
    """PSA's walk (docs/method.md §10): ``cam`` [K, H, W] (background first, replaced by
    ``(1 - max fg) ** alpha``) average-pooled to the embedding size [h, w], propagated over
    the affinities of ``embeddings`` [1, 448, h, w]; returns [K, h, w].  ``padded``: the
    embeddings are of the image zero-padded to [8h, 8w] (PSA's backbones), and so is the CAM
    before 8x8 average pooling, as PSA's inference pools it."""
    foreground = cam[1:]
    background = (1 - foreground.amax(dim=0, keepdim=True)).clamp_min(0) ** alpha
    size = embeddings.shape[-2:]
    maps = torch.cat([background, foreground])[None]
    if padded:
        stride = STRIDE["affinitynet"]
        maps = F.pad(maps, (0, size[1] * stride - maps.shape[-1], 0, size[0] * stride - maps.shape[-2]))
        pooled = F.avg_pool2d(maps, stride)[0]
    else:
        pooled = F.adaptive_avg_pool2d(maps, size)[0]
    affinity = embedding_affinity(embeddings, radius)[0]
    return random_walk(pooled.flatten(1), affinity, tuple(size), radius, beta, t).view(pooled.shape)


def walk_irn(boundary, cam, radius=WALK_RADIUS, beta=10, t=256, power=1.5):
    """IRN's walk (docs/method.md §10): ``cam`` [K, H, W] at the image size, bilinearly resized to the
    size of ``boundary`` ([h, w] or [1, 1, h, w] from ``boundary_map``), raised to
    ``power`` and multiplied by ``1 - B``, propagated along B, then upsampled x4
    (bilinear) and cropped to H x W.  Returns the walked maps [K, H, W]."""
    boundary = full_precision(boundary).reshape(boundary.shape[-2:])
    height, width = cam.shape[-2:]
    small = F.interpolate(full_precision(cam)[None], boundary.shape, mode="bilinear", align_corners=False)[0]
    walked = propagate_with_boundary(small ** power * (1 - boundary), boundary, radius, beta, t)
    return F.interpolate(walked[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, :height, :width]
