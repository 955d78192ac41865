"""Inference formats: BatchNorm folding, channels-last by device, the random walk under
autocast, the precision bench's measure, and the pipeline bench's projection."""
import argparse
import copy

import numpy as np
import pytest
import torch
from torch import nn

from bench import pipeline, precision
from data.transforms import scaled_images
from engine import stage
from net.affinity import build_affinity_net
from net.fold import fold_batchnorm
from net.segmentation import build_segmentation_net, multiscale_probs
from net.sipe import SIPENet, multiscale_maps
from tools.random_walk import propagate_with_boundary


def with_varied_batchnorm(model, seed=0):
    """``model`` in eval mode with BatchNorm statistics and affine parameters away from
    0 / 1, so that a folding that dropped or misplaced any of them would show."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(size, generator=gen) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(size, generator=gen) * 0.4 - 0.2)
    return model.eval()


def batchnorms(model):
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


IMAGE = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)


@pytest.mark.parametrize("method", ["sipe", "ae_sipe"])
def test_folding_keeps_the_classifier_maps(method):
    torch.manual_seed(0)
    model = with_varied_batchnorm(SIPENet(5, method, pretrained="none", backbone="resnet18"))
    folded = fold_batchnorm(copy.deepcopy(model))
    assert batchnorms(model) > 0 and batchnorms(folded) == 0
    keys, scaled = torch.tensor([0, 2, 4]), scaled_images(IMAGE, (1.0, 0.5))
    expected, found = (multiscale_maps(m, scaled, keys, IMAGE.shape[:2]) for m in (model, folded))
    for name in expected:
        assert torch.allclose(expected[name].fused(), found[name].fused(), atol=1e-4), name


@pytest.mark.parametrize("arch", ["deeplabv2", "deeplabv3"])
def test_folding_keeps_the_segmentation_probabilities(arch):
    """DeepLab-v3's head holds Sequential (conv, BatchNorm) pairs besides the ResNet's."""
    torch.manual_seed(0)
    model = with_varied_batchnorm(build_segmentation_net(arch, 4, "resnet18", pretrained="none"))
    folded = fold_batchnorm(copy.deepcopy(model))
    assert batchnorms(folded) == 0
    scaled = scaled_images(IMAGE, (1.0,))
    assert torch.allclose(multiscale_probs(model, scaled, IMAGE.shape[:2]),
                          multiscale_probs(folded, scaled, IMAGE.shape[:2]), atol=1e-5)


@pytest.mark.parametrize("arch", ["irn", "affinitynet"])
def test_folding_keeps_the_affinity_networks(arch):
    torch.manual_seed(0)
    model = with_varied_batchnorm(build_affinity_net(arch, pretrained="none", backbone="resnet18"))
    folded = fold_batchnorm(copy.deepcopy(model))
    assert batchnorms(folded) == 0
    image = scaled_images(IMAGE, (1.0,))[0]
    with torch.no_grad():
        expected, found = (m.logits(image) if arch == "irn" else m(image) for m in (model, folded))
    assert torch.allclose(expected, found, atol=1e-4 * expected.abs().max().item())


def test_folding_refuses_a_training_model():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(SIPENet(3, "sipe", pretrained="none", backbone="resnet18").train())


def test_inference_model_folds_and_takes_the_format():
    model = stage.inference_model(SIPENet(3, "sipe", pretrained="none", backbone="resnet18"), torch.device("cpu"),
                                  True)
    assert not model.training and batchnorms(model) == 0
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("given, device, expected", [
    (None, "cuda", True), (None, "cpu", False), (False, "cuda", False), (True, "cpu", True)])
def test_channels_last_defaults_to_the_device(given, device, expected):
    args = argparse.Namespace(channels_last=given, amp=False)
    stage.resolve_formats(args, torch.device(device))
    assert args.channels_last is expected and args.amp is False


def test_channels_last_flag_has_a_negative_form():
    parser = argparse.ArgumentParser()
    stage.add_runtime_args(parser)
    parse = lambda *extra: parser.parse_args(["--work-dir", "w", *extra]).channels_last  # noqa: E731
    assert (parse(), parse("--channels-last"), parse("--no-channels-last")) == (None, True, False)


def test_random_walk_runs_in_full_precision_under_autocast():
    """Sparse products have no bf16 kernel: make_seg_labels --amp on the CPU failed in the walk."""
    gen = torch.Generator().manual_seed(0)
    cam, boundary = torch.rand(3, 9, 11, generator=gen), torch.rand(9, 11, generator=gen)
    expected = propagate_with_boundary(cam, boundary, radius=3, beta=10, t=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = propagate_with_boundary(cam, boundary, radius=3, beta=10, t=16)
    assert found.dtype == torch.float32
    assert torch.allclose(found, expected)


def test_agreement_counts_argmax_pixels_and_the_largest_difference():
    reference = torch.zeros(2, 2, 2)
    reference[0] = 1.0  # background everywhere
    other = reference.clone()
    other[1, 0, 0] = 1.5  # one pixel of four flips to class 1
    other[0, 1, 1] = 0.9
    assert precision.agreement(reference, other) == (0.75, 1.5)


def test_precision_variants_of_a_network_are_copies():
    model = SIPENet(3, "sipe", pretrained="none", backbone="resnet18").eval()
    variant = precision.variant_of(model, channels_last=True, folded=True)
    assert batchnorms(model) > 0 and batchnorms(variant) == 0
    assert not model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_pipeline_bench_times_every_stage_and_projects_from_the_rates(capsys):
    """Every stage of the VOC route runs in process on a tiny generated set; each row's
    projection is the full run's images over the measured rate."""
    options = pipeline.parse_args(["--images", "4", "--image-size", "48", "64", "--steps", "1", "--batch-size", "2",
                                   "--crop-size", "96", "--cpu-workers", "0"])
    rows = pipeline.run(options)
    stages = [row["stage"] for row in rows]
    assert stages == ["train_cam", "make_cam", "eval_cam", "eval_cam", "make_affinity_labels", "eval_cam",
                      "train_affinity", "make_seg_labels", "train_seg", "infer_seg", "total"]
    hours = lambda text: float(text.split()[0])  # noqa: E731
    by_stage = {row["stage"]: row for row in rows[:-1]}
    make_cam = by_stage["make_cam"]
    assert hours(make_cam["VOC projected"]) == pytest.approx(10582 / float(make_cam["img/s"]) / 3600, rel=0.01,
                                                             abs=0.01)
    assert hours(make_cam["COCO projected"]) == pytest.approx(
        82783 * 640 * 480 / (500 * 375) / float(make_cam["img/s"]) / 3600, rel=0.01, abs=0.01)
    train_seg = by_stage["train_seg"]
    assert hours(train_seg["VOC projected"]) == pytest.approx(200000 / float(train_seg["img/s"]) / 3600, rel=0.01)
    assert by_stage["train_affinity"]["COCO projected"].startswith("-")
    voc_total = sum(hours(row["VOC projected"]) for row in rows[:-1])
    assert hours(rows[-1]["VOC projected"]) == pytest.approx(voc_total, abs=0.01 * len(rows))
