"""The networks on a CUDA device: the same results as on the CPU, inference without a
synchronisation, and a mixed-precision channels-last training step that learns (skipped
without CUDA)."""

import pytest
import torch

from engine import stage
from engine.train import build_optimizer, to_device, train_step
from net.segmentation import build_segmentation_net, multiscale_probs, pixel_losses
from net.sipe import SIPENet, multiscale_maps

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def test_sipe_maps_on_cuda_equal_the_cpu():
    torch.manual_seed(0)
    model = SIPENet(5, "ae_sipe", pretrained="none").eval()
    scaled = [torch.randn(1, 3, 64, 80), torch.randn(1, 3, 32, 40)]
    keys = torch.tensor([0, 2, 4])
    on_cpu = multiscale_maps(model, scaled, keys, (60, 75))
    on_cuda = multiscale_maps(model.to(CUDA), [x.to(CUDA) for x in scaled], keys.to(CUDA), (60, 75))
    for name, value in on_cpu.items():
        assert torch.allclose(on_cuda[name].numpy().fused(), value.fused(), atol=1e-3), name


def test_segmentation_probs_on_cuda_equal_the_cpu():
    torch.manual_seed(0)
    model = build_segmentation_net("deeplabv2", 5, "resnet50", pretrained="none").eval()
    scaled = [torch.randn(1, 3, 41, 57), torch.randn(1, 3, 61, 85)]
    on_cpu = multiscale_probs(model, scaled, (41, 57))
    on_cuda = multiscale_probs(model.to(CUDA), [x.to(CUDA) for x in scaled], (41, 57))
    assert torch.allclose(on_cuda.cpu(), on_cpu, atol=1e-3)


def test_amp_channels_last_training_step_learns_on_cuda():
    torch.manual_seed(0)
    model = stage.channels_last(build_segmentation_net("deeplabv2", 3, "resnet50", pretrained="none").to(CUDA), True)
    optimizer = build_optimizer(model, lr=1e-3, new_layer_lr_mult=10.0, weight_decay=5e-4, momentum=0.9)
    scaler = stage.grad_scaler(CUDA, True)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, 16:48, 16:48] = 1
    batch = to_device({"image": torch.randn(2, 3, 64, 64), "labels": labels}, CUDA, channels_last=True)
    losses = [train_step(model, batch, pixel_losses, optimizer, scaler, 0.0, True)[1].item() for _ in range(10)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@pytest.mark.parametrize("method", ["sipe", "ae_sipe"])
def test_make_cam_inference_never_waits_for_the_gpu(method):
    """make_cam's multi-scale + flip pass of one image queues every scale without a
    synchronisation (torch's sync debug mode raises on one), on the folded channels-last
    network make_cam runs."""
    torch.manual_seed(0)
    model = stage.inference_model(SIPENet(5, method, pretrained="none"), CUDA, True)
    scaled = [torch.randn(1, 3, 64, 80, device=CUDA), torch.randn(1, 3, 32, 40, device=CUDA)]
    keys = torch.tensor([0, 2, 4], device=CUDA)
    multiscale_maps(model, scaled, keys, (60, 75))  # warm-up: lazy initialisation may synchronise
    torch.cuda.set_sync_debug_mode("error")
    try:
        maps = multiscale_maps(model, scaled, keys, (60, 75))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert maps["is_cam"].fused().shape == (3, 60, 75)


def test_infer_seg_inference_never_waits_for_the_gpu():
    torch.manual_seed(0)
    model = stage.inference_model(build_segmentation_net("deeplabv2", 5, "resnet50", pretrained="none"), CUDA, True)
    scaled = [torch.randn(1, 3, 41, 57, device=CUDA), torch.randn(1, 3, 61, 85, device=CUDA)]
    multiscale_probs(model, scaled, (41, 57))
    torch.cuda.set_sync_debug_mode("error")
    try:
        probs = multiscale_probs(model, scaled, (41, 57))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert probs.shape == (5, 41, 57)
