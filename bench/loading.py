"""Training-data loading (docs/method.md §3): images per second against the number of worker processes.

``python -m bench.loading`` writes 32 toy images of VOC size (each side 375 to 500 px,
JPEG) and reads them, 192 samples in batches of 16, through train_cam's own dataset
(JPEG decode, random long-side resize to 320-640, flip, normalisation, 512 crop) and a
DataLoader with 1, 2, 4, ... worker processes up to the usable CPUs.  The rate is the
steady one, from the first batch to the last (worker start-up left out).  The files are
in the page cache after the first pass, as a dataset of VOC's size is after one epoch.

Set the rate with the machine's CPUs against the training rate of ``bench.throughput``:
while it is higher, decoding is not the bottleneck of training.
"""
import tempfile
import time

from torch.utils.data import DataLoader, Subset

from bench.measure import COLUMNS, scaling_rows, table, worker_counts
from data.datasets import ClassificationDataset
from data.sources import CustomSource
from data.toy import generate
from data.transforms import TrainTransform
from tools.recipes import SIPE

CASE = {"files": 32, "samples": 192, "batch": 16, "sides": (375, 500), "crop": 512}


def _steady_seconds(dataset, workers, case):
    """Seconds from the first batch to the last (``case["samples"] - case["batch"]`` images)."""
    batches = iter(DataLoader(dataset, batch_size=case["batch"], num_workers=workers))
    first = next(batches)
    if first["image"].shape[1:] != (3, case["crop"], case["crop"]):
        raise RuntimeError(f"the loader gave images of shape {tuple(first['image'].shape)}")
    start = time.perf_counter()
    images = sum(len(batch["image"]) for batch in batches)
    seconds = time.perf_counter() - start
    if images != case["samples"] - case["batch"]:
        raise RuntimeError(f"the loader gave {images + case['batch']} images, not {case['samples']}")
    return seconds


def run(case=CASE, workers=None):
    """One row per worker count (default: 1, 2, 4, ... up to the usable CPUs) after the
    first, against the first."""
    with tempfile.TemporaryDirectory() as root:
        generate(root, num_train=case["files"], num_val=0, size=case["sides"])
        dataset = ClassificationDataset(CustomSource(root), "train", TrainTransform(SIPE["resize_long"], case["crop"]))
        samples = Subset(dataset, [i % case["files"] for i in range(case["samples"])])
        seconds = {count: _steady_seconds(samples, count, case) for count in workers or worker_counts()}
    size = (f"{case['files']} JPEGs {case['sides'][0]}-{case['sides'][1]} px, {case['crop']} crops, "
            f"batch {case['batch']}")
    return scaling_rows("training data loading (decode + augment)", size, case["samples"] - case["batch"],
                        seconds, f"{case['crop']}x{case['crop']} batches")


if __name__ == "__main__":
    print(table(run(), COLUMNS))
