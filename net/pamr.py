"""PAMR, pixel-adaptive mask refinement (docs/method.md §6.2).

Each pixel's mask becomes an average of the masks of its 8 neighbours at several
dilations, weighted by a softmax over colour affinities, ten times over.  The
neighbours are read as shifted views of one replicate-padded tensor, so neither the
48-neighbour stack of the image nor that of the mask is ever built.
"""
import torch
import torch.nn.functional as F
from torch import nn

from net.precision import full_precision


def neighbour_offsets(dilations):
    """The 8 neighbours (dy, dx) at each dilation, the centre excluded: 8 * len(dilations)."""
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def window_offsets(dilations):
    """The 3x3 window (centre included) at each dilation: 9 * len(dilations) offsets."""
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _shifted_views(x, offsets):
    """Yield ``x`` shifted by each (dy, dx), borders replicated: out[i] = x[i + offset]."""
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    height, width = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    for dy, dx in offsets:
        yield padded[..., pad + dy:pad + dy + height, pad + dx:pad + dx + width]


def local_std(image, dilations):
    """Unbiased standard deviation over the 3x3 windows of all dilations together, per channel."""
    offsets = window_offsets(dilations)
    mean = sum(_shifted_views(image, offsets)) / len(offsets)
    sq_dev = sum((view - mean).square() for view in _shifted_views(image, offsets))
    return (sq_dev / (len(offsets) - 1)).sqrt()


def pamr_affinity(image, dilations):
    """Softmax weights [N, 8*len(dilations), H, W] of each pixel's neighbours (docs/method.md §6.2)."""
    scale = 1e-8 + 0.1 * local_std(image, dilations)
    logits = [-(image - view).abs().div(scale).mean(1) for view in
              _shifted_views(image, neighbour_offsets(dilations))]
    return torch.stack(logits, 1).softmax(1)


def propagate(mask, affinity, dilations, num_iter):
    """``num_iter`` times ``mask_i = sum_p affinity_ip mask_p`` over the neighbours."""
    offsets = neighbour_offsets(dilations)
    for _ in range(num_iter):
        refined = torch.zeros_like(mask)
        for index, view in enumerate(_shifted_views(mask, offsets)):
            refined.addcmul_(affinity[:, index:index + 1], view)
        mask = refined
    return mask


class PAMR(nn.Module):
    """``PAMR()(image [N,3,H,W] in [0,1], mask [N,C,h,w])`` -> refined mask [N,C,H,W].

    The mask is first resized to the image (bilinear, align_corners=True).
    """

    def __init__(self, num_iter=10, dilations=(1, 2, 4, 8, 12, 24)):
        super().__init__()
        self.num_iter = num_iter
        self.dilations = tuple(dilations)

    @torch.no_grad()
    def forward(self, image, mask):
        image = full_precision(image)
        mask = F.interpolate(full_precision(mask).to(image.dtype), image.shape[-2:], mode="bilinear",
                             align_corners=True)
        affinity = pamr_affinity(image, self.dilations)
        return propagate(mask, affinity, self.dilations, self.num_iter)
