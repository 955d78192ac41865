"""PAMR (docs/method.md §6.2): shifted views (ours) against one grouped convolution per dilation.

``python -m bench.pamr`` prints time and peak extra memory of ``net.pamr.PAMR`` and of
``bench.baselines.grouped_conv_pamr`` (the published form, which builds the
[N, C, 48, H, W] neighbour stack of the mask every iteration) at batch 4, a 128x128
image and a 21-class 32x32 mask (the quarter-size image and stride-16 maps of a 512
crop), 10 iterations, dilations 1..24, on the CPU and on the GPU when there is one; and
the largest difference between the two outputs.
"""
import torch

from bench.baselines import grouped_conv_pamr
from bench.measure import COLUMNS, comparison_row, devices, measure, table
from net.pamr import PAMR

CASE = {"batch": 4, "classes": 21, "image": (128, 128), "mask": (32, 32)}


def _inputs(case, device):
    """A seeded image in [0, 1] and a softmax mask."""
    gen = torch.Generator().manual_seed(0)
    n, c = case["batch"], case["classes"]
    image = torch.rand(n, 3, *case["image"], generator=gen)
    mask = torch.randn(n, c, *case["mask"], generator=gen).softmax(1)
    return image.to(device), mask.to(device)


@torch.no_grad()
def run(case=CASE):
    """One row per device: the grouped-convolution form against ``net.pamr.PAMR``."""
    rows = []
    ours_fn = PAMR()
    for device in devices():
        image, mask = _inputs(case, device)
        baseline = measure(lambda: grouped_conv_pamr(image, mask), device, repeat=1)
        ours = measure(lambda: ours_fn(image, mask), device)
        diff = (ours_fn(image, mask) - grouped_conv_pamr(image, mask)).abs().max().item()
        size = (f"{case['batch']}x3x{case['image'][0]}x{case['image'][1]} image, "
                f"{case['classes']}x{case['mask'][0]}x{case['mask'][1]} mask")
        rows.append(comparison_row("PAMR (10 iterations)", device, size, baseline, ours,
                                   f"max abs diff {diff:.1e}"))
    return rows


if __name__ == "__main__":
    print(table(run(), COLUMNS))
