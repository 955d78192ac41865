"""Images per second of the segmentation network of stage 7 (docs/method.md §13), fp32 against AMP.

``python -m bench.segmentation`` times train_seg's training step through the training
loop's own step (DeepLab-v2 and -v3 on ResNet-101 at output stride 8, crops of 321, batch
10 on a GPU as published, 2 on the CPU) and infer_seg's inference of one 500x375 image
(five scales 0.5-1.5, each with its flip, on a GPU; the 1.0 scale with its flip on the
CPU), in fp32 and with ``--amp`` (bf16; fp16 on GPUs without it), both channels-last; on a
GPU fp32 twice, with TF32 tensor cores off and on (PyTorch's default for convolutions).
Random weights and data; the backbone is loaded from a weights file, so BatchNorm is
frozen as in a real run, and folded into the convolutions for inference as infer_seg does.
"""
import argparse
import contextlib
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.measure import cost, devices, images_per_second, ratio, table
from data.transforms import scaled_images
from engine import stage
from engine.train import build_optimizer, prepare_model, to_device, train_step
from net.backbone import build_backbone
from net.segmentation import ARCHS, build_segmentation_net, multiscale_probs, pixel_losses
from tools import flags

VOC_CLASSES = 21
CROP = 321
SCALES = {"cuda": (0.5, 0.75, 1.0, 1.25, 1.5), "cpu": (1.0,)}
BATCH = {"cuda": 10, "cpu": 2}  # DeepLab-v3 trains BatchNorm: 2 images at least


def _model(arch, weights, device, train):
    """The training network, or infer_seg's (BatchNorm folded, ``stage.inference_model``)."""
    model = build_segmentation_net(arch, VOC_CLASSES, "resnet101", pretrained=str(weights))
    if not train:
        return stage.inference_model(model, device, True)
    return stage.channels_last(model.to(device).train(), True)


@contextlib.contextmanager
def tf32(enabled):
    """TF32 tensor cores for fp32 convolutions and matrix products on or off (CUDA)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# (name, AMP, TF32) of each timed precision; TF32 only matters on a GPU
PRECISIONS = {"cuda": (("fp32, TF32 off", False, False), ("fp32, TF32", False, True), ("amp", True, True)),
              "cpu": (("fp32", False, True), ("amp", True, True))}


def training_rate(arch, weights, device, amp, batch, calls):
    """train_seg images per second of one configuration, on random data."""
    gen = torch.Generator().manual_seed(0)
    model = prepare_model(_model(arch, weights, device, True), device, True)
    optimizer = build_optimizer(model, lr=2.5e-4, new_layer_lr_mult=10.0, weight_decay=5e-4, momentum=0.9)
    scaler = stage.grad_scaler(device, amp)
    labels = torch.randint(0, VOC_CLASSES, (batch, CROP, CROP), generator=gen)
    batch_dict = to_device({"image": torch.randn(batch, 3, CROP, CROP, generator=gen), "labels": labels}, device,
                           True)
    return images_per_second(lambda: train_step(model, batch_dict, pixel_losses, optimizer, scaler, 0.0, amp),
                             batch, device, calls)


def inference_rate(arch, weights, device, amp, calls):
    """infer_seg images per second on a 500x375 image, from the scaled images as the
    loader's workers hand them over."""
    torch.backends.cudnn.benchmark = False  # as in infer_seg: every scale of every image has its own size
    model = _model(arch, weights, device, False)
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    scaled = scaled_images(image, SCALES[device.type])

    def infer():
        with stage.autocast(device, amp):
            multiscale_probs(model, [x.to(device) for x in scaled], image.shape[:2])
    return images_per_second(infer, 1, device, calls)


COLUMNS = ("device", "arch", "precision", "train img/s", "step time", "speed-up (train)", "infer_seg img/s",
           "speed-up (infer)")


def run(calls=None):
    """One row per device, architecture and precision, each precision's speed-up set against
    the first (on a GPU: fp32 without TF32)."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "resnet101.pth"
        torch.save(build_backbone("resnet101", "none").state_dict(), weights)
        for device in devices():
            batch = BATCH[device.type]
            count = calls or (10 if device.type == "cuda" else 1)
            scales = f"{len(SCALES[device.type])} scales" if len(SCALES[device.type]) > 1 else "1 scale"
            for arch in ARCHS:
                first = None
                for name, amp, tensor_cores in PRECISIONS[device.type]:
                    with tf32(tensor_cores):
                        train_rate = training_rate(arch, weights, device, amp, batch, count)
                        infer_rate = inference_rate(arch, weights, device, amp, count)
                    rows.append({"device": device.type, "arch": arch, "precision": name,
                                 "train img/s": f"{train_rate:.3g} (batch {batch}, crop {CROP})",
                                 "step time": cost(batch / train_rate),
                                 "speed-up (train)": ratio(train_rate, first[0]) if first else "-",
                                 "infer_seg img/s": f"{infer_rate:.3g} ({scales})",
                                 "speed-up (infer)": ratio(infer_rate, first[1]) if first else "-"})
                    first = first or (train_rate, infer_rate)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=flags.positive_int,
                        help="timed calls per configuration (default: 10 on a GPU, 1 on the CPU)")
    print(table(run(parser.parse_args().calls), COLUMNS))
