"""The method's definitions (docs/method.md) written literally, as baselines for the benchmarks and references
for the tests."""
import numpy as np
import torch
import torch.nn.functional as F


def broadcast_structure_seeds(cam, feature, valid, bg_scale=0.5):
    """docs/method.md §5.4 with the HW x HW x C broadcast the published code uses."""
    n, c, h, w = cam.shape
    f = feature.flatten(2)
    f = f / (f.norm(dim=1, keepdim=True) + 1e-5)
    similarity = F.relu(f.transpose(1, 2) @ f)  # [N, HW, HW]
    m = cam.flatten(2)  # [N, C, HW]
    inter = (similarity[:, None, :, :] * m[:, :, None, :]).sum(-1)  # [N, C, HW]
    union = similarity.sum(-1)[:, None, :] + m.sum(-1)[:, :, None] - inter
    iou = inter / union
    iou[:, 0] *= bg_scale
    seeds = torch.zeros_like(m)
    seeds.scatter_(1, iou.argmax(1, keepdim=True), 1)
    return seeds.view(n, c, h, w) * valid


def _neighbour_kernels(channels, difference, like):
    """The fixed bank [8 * channels, 1, 3, 3] (entries 0 and +-1) of a grouped convolution.

    Per channel, filter k picks the k-th neighbour of the 3x3 window (row-major, centre
    skipped); with ``difference`` it gives centre minus neighbour instead.
    """
    bank = torch.zeros(8, 1, 3, 3, dtype=like.dtype, device=like.device)
    positions = [(y, x) for y in range(3) for x in range(3) if (y, x) != (1, 1)]
    for k, (y, x) in enumerate(positions):
        bank[k, 0, y, x] = 1
    if difference:
        bank = -bank
        bank[:, 0, 1, 1] = 1
    return bank.repeat(channels, 1, 1, 1)


def _grouped_neighbours(x, dilation, difference=False):
    """[N, C, 8, H, W]: the 8 neighbours of ``x`` at ``dilation`` (borders replicated) by
    one grouped convolution, or the centre minus them with ``difference``."""
    n, c, h, w = x.shape
    padded = F.pad(x, (dilation,) * 4, mode="replicate")
    out = F.conv2d(padded, _neighbour_kernels(c, difference, x), groups=c, dilation=dilation)
    return out.view(n, c, 8, h, w)


def grouped_conv_pamr(image, mask, num_iter=10, dilations=(1, 2, 4, 8, 12, 24)):
    """docs/method.md §6.2 the way the published PAMR computes it: one grouped convolution per
    dilation, the [N, 3, 54, H, W] window stack of the image for the standard deviation,
    and per iteration the [N, C, 48, H, W] neighbour stack of the mask."""
    mask = F.interpolate(mask, image.shape[-2:], mode="bilinear", align_corners=True)
    windows = torch.cat([torch.cat([image[:, :, None], _grouped_neighbours(image, d)], 2)
                         for d in dilations], 2)
    sigma = windows.std(2, keepdim=True)
    differences = torch.cat([_grouped_neighbours(image, d, difference=True) for d in dilations], 2)
    affinity = (-differences.abs() / (1e-8 + 0.1 * sigma)).mean(1, keepdim=True).softmax(2)
    for _ in range(num_iter):
        neighbours = torch.cat([_grouped_neighbours(mask, d) for d in dilations], 2)
        mask = (neighbours * affinity).sum(2)
    return mask


def loop_confusion_matrix(preds, gts, num_classes):
    """docs/method.md §7 directly: per image, per (ground truth, prediction) class pair, the count of
    pixels holding both; ground truth 255 (ignored) is no class, so it is never counted."""
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, gt in zip(preds, gts, strict=True):
        pred, gt = np.asarray(pred), np.asarray(gt)
        for truth in range(num_classes):
            is_truth = gt == truth
            for predicted in range(num_classes):
                total[truth, predicted] += np.count_nonzero(is_truth & (pred == predicted))
    return total
