"""Structure seeds (docs/method.md §5.4): matrix products against the broadcast form.

``python -m bench.structure_seeds`` prints time and peak extra memory of both forms at
batch 8, 21 classes, 32x32 maps and 768-channel features, on the CPU and on the GPU
when there is one.
"""
import torch

from bench.baselines import broadcast_structure_seeds
from bench.measure import COLUMNS, comparison_row, devices, measure, table
from net.sipe import structure_seeds

CASE = {"batch": 8, "classes": 21, "size": (32, 32), "channels": 768}


def run(case=CASE):
    """One row per device: the broadcast form against ``net.sipe.structure_seeds``."""
    rows = []
    for device in devices():
        gen = torch.Generator().manual_seed(0)
        n, c, (h, w), d = case["batch"], case["classes"], case["size"], case["channels"]
        cam = torch.rand(n, c, h, w, generator=gen).to(device)
        feature = torch.randn(n, d, h, w, generator=gen).to(device)
        valid = torch.ones(n, c, 1, 1, device=device)
        baseline = measure(lambda: broadcast_structure_seeds(cam, feature, valid), device)
        ours = measure(lambda: structure_seeds(cam, feature, valid), device)
        same = torch.equal(structure_seeds(cam, feature, valid), broadcast_structure_seeds(cam, feature, valid))
        rows.append(comparison_row("structure seeds", device, f"{n}x{c}x{h}x{w}, D={d}", baseline, ours,
                                   "same seeds" if same else "seeds DIFFER"))
    return rows


if __name__ == "__main__":
    print(table(run(), COLUMNS))
