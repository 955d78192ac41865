"""Inter-pixel affinity networks (SPEC 9): PSA's AffinityNet and IRN's boundary network."""
import torch
import torch.nn.functional as F
from torch import nn

from net.backbone import resnet50
from net.precision import full_precision
from tools.random_walk import pairs_within_radius, path_max_affinity, propagate_with_boundary, random_walk

ARCHS = ("affinitynet", "irn")
STRIDE = {"affinitynet": 8, "irn": 4}


class AffinityNet(nn.Module):
    """Stride-8 pixel embeddings; the affinity of a pair is ``exp(-mean_c |f_i - f_j|)``."""

    def __init__(self, pretrained="imagenet"):
        super().__init__()
        self.backbone = resnet50(pretrained)
        self.side = nn.ModuleList(nn.Conv2d(cin, cout, 1, bias=False)
                                  for cin, cout in zip(self.backbone.channels[1:], (64, 128, 256)))
        self.fuse = nn.Conv2d(448, 448, 1, bias=False)
        for conv in (*self.side, self.fuse):
            nn.init.kaiming_normal_(conv.weight)

    def param_groups(self):
        return [p for p in self.backbone.parameters() if p.requires_grad], [
            *self.side.parameters(), *self.fuse.parameters()]

    def forward(self, images):
        """Embeddings [N, 448, H/8, W/8]."""
        _, x2, x3, x4 = self.backbone(images)
        size = x2.shape[-2:]
        parts = [F.interpolate(F.elu(side(x)), size, mode="bilinear", align_corners=False)
                 for side, x in zip(self.side, (x2, x3, x4))]
        return F.elu(self.fuse(torch.cat(parts, dim=1)))

    @staticmethod
    def affinity_of(embeddings, radius=5):
        """Pair affinities [N, D, M] from the output of ``forward``."""
        return embedding_affinity(embeddings, radius)


def embedding_affinity(features, radius=5):
    """``a_ij = exp(-mean_c |f_i - f_j|)`` for the pairs of the feature map (SPEC 9)."""
    features = full_precision(features)
    n, c, h, w = features.shape
    index_from, index_to = pairs_within_radius(radius, (h, w), features.device)
    flat = features.flatten(2)
    source = flat[:, :, index_from].unsqueeze(2)  # [N, C, 1, M]
    target = flat[:, :, index_to]  # [N, C, D, M]
    return torch.exp(-(source - target).abs().mean(dim=1))


class BoundaryNet(nn.Module):
    """IRN's class-boundary branch: a stride-4 map B in [0, 1] from the five backbone
    stages of a frozen backbone (SPEC 9)."""

    widths = (64, 256, 512, 1024, 2048)

    def __init__(self, pretrained="imagenet"):
        super().__init__()
        self.backbone = resnet50(pretrained)
        for param in self.backbone.parameters():
            param.requires_grad_(False)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, 32, 1, bias=False), nn.GroupNorm(4, 32), nn.ReLU(inplace=True))
            for width in self.widths)
        self.head = nn.Conv2d(32 * len(self.widths), 1, 1, bias=True)

    def param_groups(self):
        return [], [*self.branches.parameters(), *self.head.parameters()]

    def train(self, mode=True):
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm statistics included
        return self

    def forward(self, images):
        """Boundary map B [N, 1, H/4, W/4] in [0, 1]."""
        with torch.no_grad():
            stem, *layers = self.backbone.stages()
            features = [stem(images)]
            for layer in layers:
                features.append(layer(features[-1]))
        size = features[0].shape[-2:]
        parts = [F.interpolate(branch(x.detach()), size, mode="bilinear", align_corners=False)
                 for branch, x in zip(self.branches, features)]
        return torch.sigmoid(self.head(torch.cat(parts, dim=1)))

    @staticmethod
    def affinity_of(boundary, radius=5):
        """Pair affinities [N, D, M] from the output of ``forward``: ``1 - max B`` along
        each pair's path (SPEC 9)."""
        return path_max_affinity(full_precision(boundary)[:, 0], radius)


def build_affinity_net(arch, pretrained="imagenet"):
    if arch == "affinitynet":
        return AffinityNet(pretrained)
    if arch == "irn":
        return BoundaryNet(pretrained)
    raise ValueError(f"arch must be one of {ARCHS}, not {arch!r}")


def _masked_mean(loss, mask):
    return (loss * mask).sum() / (mask.sum() + 1e-5)


def affinity_losses(affinity, bg_pos, fg_pos, neg):
    """SPEC 9 losses of pair affinities [N, D, M] against pair labels of the same shape.

    ``bg = -sum log(a + 1e-5) / count`` over background-positive pairs, ``fg`` likewise,
    ``neg = -sum log(1 + 1e-5 - a) / count`` over negative pairs.  AffinityNet's
    ``bg/4 + fg/4 + neg/2`` and IRN's ``((bg + fg)/2 + neg) / 2`` are the same sum.
    """
    affinity = full_precision(affinity)
    positive = -torch.log(affinity + 1e-5)
    return {"bg": _masked_mean(positive, bg_pos) / 4, "fg": _masked_mean(positive, fg_pos) / 4,
            "neg": _masked_mean(-torch.log(1 + 1e-5 - affinity), neg) / 2}


def walk_affinitynet(embeddings, cam, radius=5, beta=8, t=256, alpha=16):
    """PSA's walk (SPEC 10): ``cam`` [K, H, W] (background first, replaced by
    ``(1 - max fg) ** alpha``) average-pooled to the embedding size [h, w], propagated over
    the affinities of ``embeddings`` [1, 448, h, w]; returns [K, h, w]."""
    foreground = cam[1:]
    background = (1 - foreground.amax(dim=0, keepdim=True)).clamp_min(0) ** alpha
    size = embeddings.shape[-2:]
    pooled = F.adaptive_avg_pool2d(torch.cat([background, foreground])[None], size)[0]
    affinity = embedding_affinity(embeddings, radius)[0]
    return random_walk(pooled.flatten(1), affinity, tuple(size), radius, beta, t).view(pooled.shape)


def walk_irn(boundary, cam, radius=5, beta=10, t=256, power=1.5):
    """IRN's walk (SPEC 10): ``cam`` [K, H, W] average-pooled to the boundary size,
    raised to ``power`` and multiplied by ``1 - B``, propagated along ``boundary``
    [1, 1, h, w]; returns [K, h, w]."""
    boundary = full_precision(boundary)[0, 0]
    pooled = F.adaptive_avg_pool2d(cam[None], boundary.shape)[0]
    return propagate_with_boundary(pooled ** power * (1 - boundary), boundary, radius, beta, t)
