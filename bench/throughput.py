"""Images per second of the classifier (SPEC 5, 6) at VOC sizes, fp32 against AMP.

``python -m bench.throughput`` times training steps of train_cam (SIPE and AE-SIPE: batch
16 of 512x512 crops on a GPU, 2 on the CPU) through the training loop's own step, and
make_cam's multi-scale + flip inference of one 500x375 image, in fp32 and, on CUDA,
with ``--amp`` (bf16 where supported) and channels-last.  On the CPU there is no AMP.
Random weights and data: BatchNorm trains, as with ``--pretrained none``.
"""
import argparse
import time

import torch

from bench.measure import devices, table
from net.sipe import SIPENet, multiscale_maps
from tools import stage
from tools.train import train_step
from train_cam import classifier_losses

VOC_CLASSES = 21


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images_per_second(fn, images_per_call, device, calls):
    fn()  # warm-up
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _synchronize(device)
    return images_per_call * calls / (time.perf_counter() - start)


def training_rate(method, device, amp, batch, calls):
    """Training images per second of one configuration, on random data."""
    gen = torch.Generator().manual_seed(0)
    model = SIPENet(VOC_CLASSES, method, pretrained="none").to(device).train()
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    backbone, new = model.param_groups()
    optimizer = torch.optim.SGD([{"params": backbone}, {"params": new}], lr=1e-3)
    scaler = stage.grad_scaler(device, amp)
    images = torch.randn(batch, 3, 512, 512, generator=gen).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = (torch.rand(batch, VOC_CLASSES - 1, generator=gen) < 0.15).float().to(device)
    labels[:, 0] = 1
    batch_dict = {"image": images, "label": labels, "valid": torch.ones(batch, 512, 512, device=device)}
    return _images_per_second(lambda: train_step(model, batch_dict, classifier_losses, optimizer, scaler, 1.0, amp),
                              batch, device, calls)


def inference_rate(method, device, amp, calls):
    """make_cam images per second (four scales, each with its flip) on a 500x375 image."""
    model = SIPENet(VOC_CLASSES, method, pretrained="none").to(device).eval()
    image = torch.randn(1, 3, 375, 500, generator=torch.Generator().manual_seed(0)).to(device)
    keys = torch.tensor([0, 3, 15], device=device)

    def infer():
        with stage.autocast(device, amp):
            multiscale_maps(model, image, keys)
    return _images_per_second(infer, 1, device, calls)


def run(calls=None):
    rows = []
    for device in devices():
        gpu = device.type == "cuda"
        for method in ("sipe", "ae_sipe"):
            for amp in ((False, True) if gpu else (False,)):
                batch = 16 if gpu else 2
                n = calls or (20 if gpu else 2)
                rows.append({"device": device.type, "method": method, "precision": "amp" if amp else "fp32",
                             "train img/s": f"{training_rate(method, device, amp, batch, n):.2f} (batch {batch})",
                             "make_cam img/s": f"{inference_rate(method, device, amp, n):.2f}"})
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, help="timed steps per configuration (default: 20 on a GPU, 2 on the CPU)")
    print(table(run(parser.parse_args().calls), ("device", "method", "precision", "train img/s", "make_cam img/s")))
