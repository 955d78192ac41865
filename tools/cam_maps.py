"""A CAM as make_cam computes it: one low-resolution map per inference scale, made one map at
the image size by resizing, summing and normalising (docs/method.md §5.9, §5.10).  CAM files keep the
scales and fuse them on load (tools/cam_files.py), which is exact and a small part of the size."""
from typing import NamedTuple

import torch
import torch.nn.functional as F


def max_normalize(x, eps=1e-5):
    """Each channel divided by its spatial maximum + eps."""
    return x / (x.amax(dim=(-2, -1), keepdim=True) + eps)


def with_background(foreground, dim=0):
    """Foreground maps in [0, 1] with the background ``1 - max`` over ``dim`` (the class
    axis) prepended along it: [K-1, ...] -> [K, ...] (docs/method.md §5.2, §5.10)."""
    return torch.cat([1 - foreground.amax(dim=dim, keepdim=True), foreground], dim=dim)


def fuse_scales(scales, size, background=False):
    """docs/method.md §5.9, §5.10: each scale's map [K,h,w] bilinearly resized to ``size`` (H, W;
    align_corners=False), summed over the scales, each channel divided by its max + 1e-5;
    with ``background`` the maps are foreground only and ``1 - max`` is prepended.
    Returns float32 [K(+1),H,W]."""
    total = 0
    for value in scales:
        value = torch.as_tensor(value, dtype=torch.float32)
        total = total + F.interpolate(value[None], tuple(size), mode="bilinear", align_corners=False)[0]
    fused = max_normalize(total)
    return with_background(fused) if background else fused


class ScaleMaps(NamedTuple):
    """One map of one image before the scales are fused: ``scales`` a list of float32
    [K,h,w] tensors or arrays (the image and its flip already summed), ``size`` the image's (H, W),
    ``background`` whether the channels are the foreground only (``1 - max`` prepended)."""

    scales: list
    size: tuple
    background: bool = False

    def numpy(self):
        """The same maps as float32 numpy arrays, as they are written (and sent to a pool
        worker: a tensor would travel through shared memory that a stopped pool cuts)."""
        return self._replace(scales=[torch.as_tensor(value).detach().float().cpu().numpy() for value in self.scales])

    def fused(self):
        """The map at the image size, float32 [K,H,W] (``fuse_scales``)."""
        return fuse_scales(self.scales, self.size, self.background)
