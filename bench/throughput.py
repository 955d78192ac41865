"""Images per second of the classifier (docs/method.md §5, §6) at VOC sizes, fp32 against AMP.

``python -m bench.throughput`` times training steps of train_cam (SIPE and AE-SIPE: batch
16 of 512x512 crops on a GPU, 2 on the CPU) through the training loop's own step, and
make_cam's multi-scale + flip inference of one 500x375 image, in fp32 and with ``--amp``
(bf16; fp16 on GPUs without it), both with ``--channels-last`` (and make_cam's network with
its BatchNorm folded, ``stage.inference_model``).  It prints AMP's
training speed-up over fp32 and AE-SIPE's step time over SIPE's.  make_cam's resizing of
the scales (PIL, in its loader's workers) is timed apart, in milliseconds per image for
one worker: the network's rate holds when the workers keep up with it.
Random weights and data: BatchNorm trains, as with ``--pretrained none --no-frozen``.
"""
import argparse

import numpy as np
import torch

from bench.measure import cost, devices, images_per_second, ratio, table
from data.transforms import scaled_images
from engine import stage
from engine.train import prepare_model, to_device, train_step
from net.sipe import PROTOTYPE_METHODS, SIPENet, classifier_losses, multiscale_maps
from tools import flags

VOC_CLASSES = 21


def training_rate(method, device, amp, batch, calls):
    """Training images per second of one configuration, on random data."""
    gen = torch.Generator().manual_seed(0)
    model = prepare_model(SIPENet(VOC_CLASSES, method, pretrained="none").to(device).train(), device, True)
    optimizer = torch.optim.SGD([{"params": group["params"]} for group in model.param_groups()], lr=1e-3)
    scaler = stage.grad_scaler(device, amp)
    labels = (torch.rand(batch, VOC_CLASSES - 1, generator=gen) < 0.15).float()
    labels[:, 0] = 1
    batch_dict = to_device({"image": torch.randn(batch, 3, 512, 512, generator=gen), "label": labels,
                            "valid": torch.ones(batch, 512, 512)}, device, True)
    return images_per_second(lambda: train_step(model, batch_dict, classifier_losses, optimizer, scaler, 1.0, amp),
                             batch, device, calls)


SCALES = (1.0, 0.5, 1.5, 2.0)


def _test_image():
    return np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)


def inference_rate(method, device, amp, calls):
    """make_cam images per second on a 500x375 image: four scales, each with its flip, from
    the scaled images as make_cam's loader workers hand them over."""
    torch.backends.cudnn.benchmark = False  # as in make_cam: every scale of every image has its own size
    model = stage.inference_model(SIPENet(VOC_CLASSES, method, pretrained="none"), device, True)
    image = _test_image()
    scaled = scaled_images(image, SCALES)
    keys = torch.tensor([0, 3, 15], device=device)

    def infer():
        with stage.autocast(device, amp):
            multiscale_maps(model, [x.to(device) for x in scaled], keys, image.shape[:2])
    return images_per_second(infer, 1, device, calls)


def resize_seconds(calls=10):
    """Seconds per image of make_cam's resizing in one loader worker (``scaled_images``)."""
    image = _test_image()
    return 1 / images_per_second(lambda: scaled_images(image, SCALES), 1, torch.device("cpu"), calls)


COLUMNS = ("device", "method", "precision", "train img/s", "step time", "AMP speed-up", "step time / SIPE's",
           "make_cam img/s", "make_cam resize / img (1 worker)")


def run(calls=None):
    """One row per device, method and precision, with AMP's training speed-up over fp32 and
    AE-SIPE's step time over SIPE's at the same precision."""
    rows = []
    resize = cost(resize_seconds())
    for device in devices():
        gpu = device.type == "cuda"
        batch = 16 if gpu else 2
        train_calls, infer_calls = (calls, calls) if calls else ((20, 20) if gpu else (4, 2))
        rates = {}
        for method in PROTOTYPE_METHODS:
            for amp in (False, True):
                rate = rates[method, amp] = training_rate(method, device, amp, batch, train_calls)
                rows.append({"device": device.type, "method": method, "precision": "amp" if amp else "fp32",
                             "train img/s": f"{rate:.3g} (batch {batch})", "step time": cost(batch / rate),
                             "AMP speed-up": ratio(rate, rates[method, False]) if amp else "-",
                             "step time / SIPE's": ratio(rates["sipe", amp], rate) if method != "sipe" else "-",
                             "make_cam img/s": f"{inference_rate(method, device, amp, infer_calls):.3g}",
                             "make_cam resize / img (1 worker)": resize})
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=flags.positive_int,
                        help="timed calls per configuration (default on a GPU: 20; on the CPU: 4 training steps "
                             "and 2 make_cam images)")
    print(table(run(parser.parse_args().calls), COLUMNS))
