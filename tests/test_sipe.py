"""SPEC 5-6 functions against direct computations of their definitions."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.baselines import broadcast_structure_seeds, grouped_conv_pamr
from net.backbone import ResNet50, resnet50
from net.pamr import PAMR
from net.sipe import (SIPENet, label_mask, multiscale_maps, normalized_cam, prototypes, reactivate,
                      structure_seeds)
from tools import stage
from tools.io import PipelineError


@pytest.mark.parametrize("bg_scale", [0.5, 1.0])
def test_structure_seeds_match_broadcast_form(bg_scale):
    gen = torch.Generator().manual_seed(0)
    cam = torch.rand(3, 5, 6, 7, generator=gen, dtype=torch.float64)
    feature = torch.randn(3, 16, 6, 7, generator=gen, dtype=torch.float64)
    valid = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.float64)[..., None, None]
    ours = structure_seeds(cam, feature, valid, bg_scale)
    assert torch.equal(ours, broadcast_structure_seeds(cam, feature, valid, bg_scale))
    assert torch.all(ours.sum(1) <= 1)
    assert ours[0, 2].sum() == 0 and ours[0, 4].sum() == 0  # classes absent from the labels


def test_prototypes_are_means_over_seed_pixels():
    gen = torch.Generator().manual_seed(1)
    seeds = F.one_hot(torch.randint(0, 3, (2, 5, 4), generator=gen), 4).permute(0, 3, 1, 2).double()
    feature = torch.randn(2, 6, 5, 4, generator=gen, dtype=torch.float64)
    ours = prototypes(seeds, feature)
    assert ours.shape == (2, 4, 6)
    for n in range(2):
        for c in range(4):
            mask = seeds[n, c].bool()
            expected = feature[n][:, mask].mean(1) if mask.any() else torch.zeros(6, dtype=torch.float64)
            assert torch.allclose(ours[n, c], expected)
    assert torch.all(ours[:, 3] == 0)  # class 3 never drawn: no seed pixels


def test_prototypes_resize_seeds_nearest():
    seeds = torch.zeros(1, 2, 2, 2)
    seeds[0, 0, :, 0] = 1
    seeds[0, 1, :, 1] = 1
    feature = torch.arange(16.0).view(1, 1, 4, 4)
    ours = prototypes(seeds, feature)
    assert torch.allclose(ours[0, :, 0], torch.tensor([feature[0, 0, :, :2].mean(), feature[0, 0, :, 2:].mean()]))


def test_reactivate_is_relu_cosine():
    gen = torch.Generator().manual_seed(2)
    protos = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64)
    feature = torch.randn(2, 8, 4, 5, generator=gen, dtype=torch.float64)
    ours = reactivate(protos, feature)
    for n in range(2):
        for c in range(3):
            cos = F.cosine_similarity(feature[n], protos[n, c][:, None, None], dim=0)
            assert torch.allclose(ours[n, c], cos.clamp_min(0))


def pamr_loop(image, mask, dilations, num_iter):
    """SPEC 6.2 pixel by pixel, borders replicated by clamping the coordinates."""
    image, mask = image[0].numpy(), mask[0].numpy().copy()
    _, height, width = image.shape
    clamp = lambda y, x: (min(max(y, 0), height - 1), min(max(x, 0), width - 1))  # noqa: E731
    neighbours = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    windows = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    alpha = np.zeros((height, width, len(neighbours)))
    for y in range(height):
        for x in range(width):
            logits = np.zeros(len(neighbours))
            for ch in range(3):
                values = [image[ch][clamp(y + dy, x + dx)] for dy, dx in windows]
                sigma = np.std(values, ddof=1)
                for k, (dy, dx) in enumerate(neighbours):
                    logits[k] += -abs(image[ch, y, x] - image[ch][clamp(y + dy, x + dx)]) / (1e-8 + 0.1 * sigma)
            logits /= 3
            e = np.exp(logits - logits.max())
            alpha[y, x] = e / e.sum()
    for _ in range(num_iter):
        new = np.zeros_like(mask)
        for y in range(height):
            for x in range(width):
                for k, (dy, dx) in enumerate(neighbours):
                    new[:, y, x] += alpha[y, x, k] * mask[(slice(None), *clamp(y + dy, x + dx))]
        mask = new
    return mask


def test_pamr_matches_loop_form():
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 7, 9, generator=gen, dtype=torch.float64)
    image[..., :4] *= 0.2  # a darker region so the affinities are not uniform
    mask = torch.rand(1, 2, 7, 9, generator=gen, dtype=torch.float64)
    dilations = (1, 2, 3)
    ours = PAMR(num_iter=3, dilations=dilations)(image, mask)
    expected = pamr_loop(image, mask, dilations, 3)
    assert np.allclose(ours[0].numpy(), expected, atol=1e-10)


def test_pamr_matches_grouped_convolution_form():
    gen = torch.Generator().manual_seed(5)
    image = torch.rand(2, 3, 12, 10, generator=gen, dtype=torch.float64)
    mask = torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    ours = PAMR(num_iter=4, dilations=(1, 2, 5))(image, mask)
    assert torch.allclose(ours, grouped_conv_pamr(image, mask, 4, (1, 2, 5)), atol=1e-10)


def test_pamr_resizes_mask_and_keeps_mass():
    gen = torch.Generator().manual_seed(4)
    image = torch.rand(2, 3, 16, 20, generator=gen)
    mask = torch.softmax(torch.randn(2, 4, 4, 5, generator=gen), 1)
    out = PAMR()(image, mask)
    assert out.shape == (2, 4, 16, 20)
    # a convex combination of distributions stays a distribution
    assert torch.allclose(out.sum(1), torch.ones(2, 16, 20), atol=1e-5)


def test_backbone_output_stride_16_and_frozen_batchnorm():
    model = ResNet50(frozen_bn=True).train()
    shapes = [x.shape for x in model(torch.randn(1, 3, 65, 97))]
    assert [s[1] for s in shapes] == [256, 512, 1024, 2048]
    assert shapes[2][-2:] == shapes[3][-2:] == (5, 7)
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not any(p.requires_grad for p in (*model.conv1.parameters(), *model.bn1.parameters()))
    assert all(p.requires_grad for p in model.layer1.parameters())
    scratch = ResNet50(frozen_bn=False).train()
    assert all(m.training for m in scratch.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_weights_from_a_path_and_clear_errors(tmp_path):
    reference = ResNet50()
    path = tmp_path / "r50.pth"
    torch.save({**reference.state_dict(), "fc.weight": torch.zeros(1000, 2048)}, path)
    loaded = resnet50(str(path))
    assert torch.equal(loaded.layer3[2].conv2.weight, reference.layer3[2].conv2.weight)
    with pytest.raises(PipelineError, match="missing.pth: weights file not found"):
        resnet50(str(tmp_path / "missing.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(PipelineError, match="other.pth: not ResNet-50 weights"):
        resnet50(str(tmp_path / "other.pth"))


def test_imagenet_weights_offline_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(PipelineError, match=r"resnet50-0676ba61.pth: ImageNet weights not found.*Download"):
        resnet50("imagenet")


@pytest.mark.parametrize("method", ["sipe", "ae_sipe"])
def test_training_pass_gives_finite_losses_and_gradients(method):
    torch.manual_seed(0)
    model = SIPENet(4, method, pretrained="none").train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    valid = torch.ones(2, 64, 64)
    valid[1, :, 48:] = 0
    out = model(images, labels, valid)
    loss = out["cls_loss"] + out["gsc_loss"]
    assert torch.isfinite(loss)
    loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0
    assert model.side[0].weight.grad.abs().sum() > 0


def test_amp_runs_the_backbone_in_bf16_and_the_prototype_branch_in_fp32():
    torch.manual_seed(0)
    model = SIPENet(4, "ae_sipe", pretrained="none").train()
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    with stage.autocast(torch.device("cpu"), True):
        raw_cam, hierarchy, x4 = model.extract(images)
        cam = F.interpolate(normalized_cam(raw_cam), hierarchy.shape[-2:], mode="bilinear", align_corners=True)
        is_cam, ae_is_cam = model.prototype_maps(cam, hierarchy, x4, label_mask(labels), images)
    assert raw_cam.dtype == x4.dtype == torch.bfloat16
    assert is_cam.dtype == ae_is_cam.dtype == torch.float32
    assert torch.isfinite(is_cam).all() and torch.isfinite(ae_is_cam).all()


@pytest.mark.parametrize("method", ["sipe", "ae_sipe"])
def test_multiscale_maps_shapes_and_range(method):
    torch.manual_seed(0)
    model = SIPENet(5, method, pretrained="none").eval()
    image = torch.randn(1, 3, 50, 70)
    keys = torch.tensor([0, 2, 4])
    maps = multiscale_maps(model, image, keys, scales=(1.0, 0.5))
    expected = {"plain_cam", "is_cam"} | ({"ae_is_cam"} if method == "ae_sipe" else set())
    assert set(maps) == expected
    for value in maps.values():
        assert value.shape == (3, 50, 70)
        assert value.min() >= 0 and value.max() <= 1
    foreground = maps["plain_cam"][1:]
    assert torch.allclose(maps["plain_cam"][0], 1 - foreground.max(0).values)
