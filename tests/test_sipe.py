"""docs/method.md §5-6 functions against direct computations of their definitions."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.baselines import broadcast_structure_seeds, grouped_conv_pamr
import torchvision

import net.sipe
from data.transforms import scaled_images
from net.backbone import FrozenStatsBatchNorm2d, build_backbone, hub_weights_path, stage_outputs, stem
from net.pamr import PAMR
from net.sipe import (SIPENet, l2_normalize, label_mask, multiscale_maps, normalized_cam, prototypes, reactivate,
                      scale_maps, structure_seeds)
from engine import stage
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


@pytest.mark.parametrize("block", [1, 7, 40])
def test_structure_seeds_in_column_blocks_match_the_broadcast_form(monkeypatch, block):
    """Blocks of 1, 7 or 40 elements: one column an image, 2 columns (the last block of 1),
    13 columns; the seeds are those of the whole HW x HW similarity."""
    gen = torch.Generator().manual_seed(2)
    cam = torch.rand(3, 4, 5, 6, generator=gen, dtype=torch.float64)
    feature = torch.randn(3, 8, 5, 6, generator=gen, dtype=torch.float64)
    valid = torch.ones(3, 4, 1, 1, dtype=torch.float64)
    monkeypatch.setattr(net.sipe, "SIMILARITY_BLOCK", block)
    assert torch.equal(structure_seeds(cam, feature, valid), broadcast_structure_seeds(cam, feature, valid, 0.5))


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
    """docs/method.md §6.2 pixel by pixel, borders replicated by clamping the coordinates."""
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


def weights_file(tmp_path, backbone="resnet50", seed=0):
    """A torchvision-format weights file (fc included) of a randomly initialised ResNet."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, backbone)()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{backbone}.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_backbone_is_torchvision_resnet_at_output_stride_16(tmp_path):
    path, state = weights_file(tmp_path)
    model = build_backbone("resnet50", str(path))
    assert isinstance(model, torchvision.models.ResNet)
    assert torch.equal(model.layer3[2].conv2.weight, state["layer3.2.conv2.weight"])
    assert model.layer4[0].conv2.stride == (1, 1) and model.layer4[0].conv2.dilation == (1, 1)
    assert model.layer4[0].downsample[0].stride == (1, 1)
    outputs = stage_outputs(model, torch.randn(1, 3, 65, 97))
    assert [x.shape[1] for x in outputs] == [64, 256, 512, 1024, 2048]
    assert outputs[3].shape[-2:] == outputs[4].shape[-2:] == (5, 7)  # strides 2, 2, 2, 1
    deep = build_backbone("resnet101", "none")
    assert len(deep.layer3) == 23 and deep.layer4[0].conv2.stride == (1, 1)


def test_loaded_batchnorm_keeps_its_statistics_in_training(tmp_path):
    path, _ = weights_file(tmp_path)
    model = build_backbone("resnet50", str(path)).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(isinstance(m, FrozenStatsBatchNorm2d) for m in norms)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(2, 3, 64, 64)
    train_out = model.layer1(stem(model)(images))
    eval_out = model.eval().layer1(stem(model)(images))
    assert torch.equal(train_out, eval_out)  # running statistics in training too
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    scratch = build_backbone("resnet50", "none").train()
    assert not any(isinstance(m, FrozenStatsBatchNorm2d) for m in scratch.modules())


def test_weights_from_a_path_and_clear_errors(tmp_path):
    with pytest.raises(PipelineError, match="missing.pth: weights file not found"):
        build_backbone("resnet50", str(tmp_path / "missing.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(PipelineError, match="other.pth: not weights of this backbone"):
        build_backbone("resnet50", str(tmp_path / "other.pth"))
    path, _ = weights_file(tmp_path)
    with pytest.raises(PipelineError, match="resnet50.pth: not weights of this backbone"):
        build_backbone("resnet101", str(path))
    with pytest.raises(PipelineError, match="unknown backbone"):
        build_backbone("vgg16", "none")


def test_imagenet_weights_come_offline_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(PipelineError, match=r"resnet50-0676ba61.pth: ImageNet weights not found.*Download"):
        build_backbone("resnet50", "imagenet")
    path, state = weights_file(tmp_path)
    cached = hub_weights_path("resnet50")
    cached.parent.mkdir(parents=True)
    path.rename(cached)
    model = build_backbone("resnet50", "imagenet")  # torchvision's weights API, from the cache
    assert torch.equal(model.layer2[1].conv1.weight, state["layer2.1.conv1.weight"])


def test_new_layers_keep_pytorchs_default_init():
    torch.manual_seed(0)
    model = SIPENet(21, "sipe", pretrained="none")
    for conv in (model.classifier, *model.side):
        bound = 1 / conv.weight[0].numel() ** 0.5  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), ..)
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound


def test_training_step_leaves_stem_layer1_layer2_without_gradient(tmp_path):
    path, _ = weights_file(tmp_path)
    model = SIPENet(4, "sipe", pretrained=str(path)).train()
    out = model(torch.randn(2, 3, 64, 64), torch.tensor([[1.0, 0, 1], [0, 1, 0]]), torch.ones(2, 64, 64))
    (out["cls_loss"] + out["gsc_loss"]).backward()
    backbone = model.backbone
    for module in (backbone.conv1, backbone.bn1, backbone.layer1, backbone.layer2):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    assert backbone.layer3[0].conv1.weight.grad.abs().sum() > 0
    assert backbone.layer3[0].bn1.weight.grad.abs().sum() > 0  # BatchNorm's affine parameters train
    trained = model.param_groups()[0]["params"]
    assert {id(p) for p in trained} == {id(p) for p in (*backbone.layer3.parameters(),
                                                        *backbone.layer4.parameters())}


def test_hierarchical_features_resized_without_align_corners():
    torch.manual_seed(0)
    model = SIPENet(4, "sipe", pretrained="none").eval()
    images = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        _, hierarchy, _ = model.extract(images)
        xs = stage_outputs(model.backbone, images)[1:]
        size = xs[2].shape[-2:]
        expected = torch.cat([F.interpolate(l2_normalize(side(x)), size, mode="bilinear", align_corners=False)
                              for side, x in zip(model.side, xs)], dim=1)
    torch.testing.assert_close(hierarchy, expected)


def record_seeds(monkeypatch):
    """Record the (feature, seeds) of every structure_seeds call of net.sipe."""
    calls = []

    def recording(cam, feature, valid, bg_scale=0.5):
        seeds = structure_seeds(cam, feature, valid, bg_scale)
        calls.append((feature, seeds))
        return seeds

    monkeypatch.setattr(net.sipe, "structure_seeds", recording)
    return calls


@pytest.mark.parametrize("method", ["sipe", "ae_sipe"])
def test_training_seeds_never_on_padded_pixels(method, monkeypatch):
    torch.manual_seed(0)
    calls = record_seeds(monkeypatch)
    model = SIPENet(4, method, pretrained="none").train()
    valid = torch.ones(2, 64, 64)
    valid[0, :, 40:] = 0  # right part of the first crop is padding
    valid[1, 44:, :] = 0
    model(torch.randn(2, 3, 64, 64), torch.tensor([[1.0, 0, 1], [0, 1, 0]]), valid)
    (feature, seeds), = calls
    assert feature.shape[1] == (2048 if method == "sipe" else 768)  # SIPE trains its seeds on x4
    padded = F.interpolate(valid[:, None], seeds.shape[-2:], mode="nearest")[:, 0] == 0
    assert padded.any() and seeds.sum(1)[padded].eq(0).all()
    assert seeds.sum(1)[~padded].eq(1).all()  # every other pixel is a seed of a labelled class
    assert seeds[0, 2].sum() == 0 and seeds[1, 1].sum() == 0 and seeds[1, 3].sum() == 0


@pytest.mark.parametrize("method", ["sipe", "ae_sipe"])
def test_inference_seeds_come_from_the_hierarchical_features(method, monkeypatch):
    torch.manual_seed(0)
    calls = record_seeds(monkeypatch)
    model = SIPENet(4, method, pretrained="none").eval()
    scale_maps(model, torch.randn(1, 3, 48, 64), label_mask(torch.tensor([[0.0, 1, 0]])))
    (feature, seeds), = calls
    assert feature.shape[1] == 768  # SIPE's published make_cam too (docs/method.md §5.4)
    assert seeds[:, [1, 3]].sum() == 0


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
        is_cam, ae_is_cam = model.prototype_maps(cam, hierarchy, hierarchy, label_mask(labels), images)
    assert raw_cam.dtype == x4.dtype == torch.bfloat16
    assert is_cam.dtype == ae_is_cam.dtype == torch.float32
    assert torch.isfinite(is_cam).all() and torch.isfinite(ae_is_cam).all()


@pytest.mark.parametrize("method", ["sipe", "ae_sipe"])
def test_multiscale_maps_shapes_and_range(method):
    torch.manual_seed(0)
    model = SIPENet(5, method, pretrained="none").eval()
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    keys = torch.tensor([0, 2, 4])
    maps = {name: value.fused() for name, value in
            multiscale_maps(model, scaled_images(image, (1.0, 0.5)), keys, (50, 70)).items()}
    expected = {"plain_cam", "is_cam"} | ({"ae_is_cam"} if method == "ae_sipe" else set())
    assert set(maps) == expected
    for value in maps.values():
        assert value.shape == (3, 50, 70)
        assert value.min() >= 0 and value.max() <= 1
    foreground = maps["plain_cam"][1:]
    assert torch.allclose(maps["plain_cam"][0], 1 - foreground.max(0).values)


def test_freezing_is_a_parameter_of_its_own_recorded_in_the_checkpoint(tmp_path):
    """``pretrained`` names the weights; ``frozen`` (None: with weights) says what is frozen:
    the stem to layer2 without autograd and BatchNorm keeping its statistics (docs/method.md §4).  The
    inference stages rebuild a classifier frozen as its checkpoint records."""
    path, _ = weights_file(tmp_path, "resnet18")
    def batchnorms(model):
        return [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    free = SIPENet(5, "sipe", pretrained=str(path), backbone="resnet18", frozen=False)
    assert not free.frozen and free.frozen_stages == 0
    assert all(p.requires_grad for p in free.backbone.parameters())
    assert not any(isinstance(m, FrozenStatsBatchNorm2d) for m in batchnorms(free))
    frozen = SIPENet(5, "sipe", pretrained="none", backbone="resnet18", frozen=True)
    assert frozen.frozen and frozen.frozen_stages == 3
    assert not any(p.requires_grad for p in frozen.backbone.layer2.parameters())
    assert all(p.requires_grad for p in frozen.backbone.layer3.parameters())
    assert all(isinstance(m, FrozenStatsBatchNorm2d) for m in batchnorms(frozen))
    assert SIPENet(5, pretrained=str(path), backbone="resnet18").frozen
    assert not SIPENet(5, pretrained="none", backbone="resnet18").frozen
    for recorded in (True, False):
        checkpoint = {"method": "ae_sipe", "backbone": "resnet18", "frozen": recorded}
        assert net.sipe.classifier_of(checkpoint, 5).frozen is recorded
