"""Stage 7 (docs/method.md §13): the DeepLab networks against direct computations, the loss, the
weakly-supervised guard, and train_seg / infer_seg through the real scripts on a tiny toy
set (outputs, CRF, the test-server layout, bad input; resume in test_faults)."""
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data.sources import build_source
from net.backbone import build_backbone
from net.segmentation import ASPP_DILATIONS, ASPPv2, build_segmentation_net, multiscale_probs, segmentation_loss
from tools.io import PipelineError, read_label_png, write_label_png
from tests.reference import STEPS, run_stage
from tests.scripts import run

# on the xdist worker that makes the shared reference run (tests/reference.py) once
pytestmark = pytest.mark.xdist_group("reference")


def test_aspp_v2_is_the_sum_of_four_dilated_convs():
    torch.manual_seed(0)
    head = ASPPv2(16, 5)
    x = torch.randn(2, 16, 13, 11)
    want = sum(F.conv2d(x, conv.weight, conv.bias, padding=d, dilation=d)
               for conv, d in zip(head.convs, (6, 12, 18, 24), strict=True))
    assert ASPP_DILATIONS == (6, 12, 18, 24)
    assert torch.allclose(head(x), want, atol=1e-6)


@pytest.mark.parametrize("arch", ["deeplabv2", "deeplabv3"])
def test_logits_have_the_input_size_for_odd_sizes(arch):
    model = build_segmentation_net(arch, 4, backbone="resnet50", pretrained="none").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 53)).shape == (1, 4, 37, 53)


def test_backbone_at_output_stride_8_is_dilated():
    model = build_backbone("resnet50", "none", output_stride=8)
    x4 = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2,
                             model.layer3, model.layer4)(torch.randn(1, 3, 64, 64))
    assert x4.shape[-2:] == (8, 8)
    assert model.layer4[1].conv2.dilation == (4, 4) and model.layer3[1].conv2.dilation == (2, 2)


def test_deeplabv2_from_weights_keeps_batchnorm_frozen(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(build_backbone("resnet50", "none").state_dict(), path)
    model = build_segmentation_net("deeplabv2", 3, backbone="resnet50", pretrained=str(path)).train()
    bn = model.backbone.layer3[0].bn1
    before = bn.running_mean.clone()
    backbone_params, head_params = (group["params"] for group in model.param_groups())
    assert not any(p is bn.weight or p is bn.bias for p in backbone_params)
    assert {id(p) for p in head_params} == {id(p) for p in model.head.parameters()}
    model(torch.randn(2, 3, 40, 40)).sum().backward()
    assert torch.equal(bn.running_mean, before) and bn.weight.grad is None
    assert model.backbone.layer3[0].conv1.weight.grad is not None


def test_loss_ignores_255_and_is_zero_without_labels():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 5)
    labels = torch.randint(0, 3, (2, 4, 5))
    labels[0, :2] = 255
    keep = labels != 255
    picked = logits.permute(0, 2, 3, 1)[keep]  # [P, C] of the labelled pixels
    want = -(picked.log_softmax(dim=1)[torch.arange(len(picked)), labels[keep]]).mean()
    assert torch.allclose(segmentation_loss(logits, labels), want, atol=1e-6)
    assert segmentation_loss(logits, torch.full_like(labels, 255)).item() == 0.0


def test_weights_trained_with_pixel_labels_are_refused(tmp_path):
    torchvision_seg = {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7), "classifier.4.weight": torch.zeros(21, 256)}
    torch.save(torchvision_seg, tmp_path / "deeplabv3_coco.pth")
    torch.save({"kind": "seg", "model": {"backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "seg.pth")
    for name in ("deeplabv3_coco.pth", "seg.pth"):
        with pytest.raises(PipelineError, match=f"{name}: .*pixel labels"):
            build_segmentation_net("deeplabv2", 21, backbone="resnet50", pretrained=str(tmp_path / name))


def test_inference_of_a_flipped_image_is_the_flipped_inference():
    torch.manual_seed(2)
    model = build_segmentation_net("deeplabv2", 3, backbone="resnet50", pretrained="none").eval()
    scaled = [torch.randn(1, 3, 24, 30), torch.randn(1, 3, 36, 45)]
    probs = multiscale_probs(model, scaled, (24, 30))
    flipped = multiscale_probs(model, [x.flip(-1) for x in scaled], (24, 30))
    assert probs.shape == (3, 24, 30) and torch.allclose(probs.sum(0), torch.ones(24, 30), atol=1e-5)
    assert torch.allclose(flipped, probs.flip(-1), atol=1e-6)


# --- the scripts on a tiny toy set ---

def data_args(root, work, split):
    return ["--dataset", "custom", "--data-root", root, "--split", split, "--work-dir", work]


def train_seg(toy, reference, work, *extra):
    """The reference run's train_seg (tests/reference.py) on the pseudo-labels in ``work``."""
    return run_stage("train_seg", toy, reference[1], work, "--label-dir", work / "pseudo_labels", *extra, check=False)


@pytest.fixture
def seg_run(reference, tmp_path):
    """A run directory holding the reference run's segmentation network, trained four steps
    on the reference pseudo-labels (8 images, batch 2: one pass)."""
    work = tmp_path / "run"
    (work / "ckpt").mkdir(parents=True)
    shutil.copy(reference[1] / "ckpt" / "seg.pth", work / "ckpt")
    return work


@pytest.mark.slow
def test_train_seg_checkpoint(seg_run):
    checkpoint = torch.load(seg_run / "ckpt" / "seg.pth", weights_only=False)
    assert checkpoint["kind"] == "seg" and checkpoint["arch"] == "deeplabv2" and checkpoint["step"] == STEPS
    assert checkpoint["backbone"] == "resnet18" and checkpoint["num_classes"] == 5
    assert any(key.startswith("head.convs.3.") for key in checkpoint["model"])


@pytest.mark.slow
def test_infer_seg_writes_predictions_crf_and_pictures(toy, seg_run):
    run("infer_seg.py", *data_args(toy, seg_run, "val"), "--device", "cpu", "--num-workers", "0",
        "--scales", "1.0", "0.5", "--crf", "--crf-workers", "1", "--visualize", "1")
    source = build_source("custom", toy)
    for name in source.ids("val"):
        plain = read_label_png(seg_run / "segmentation" / "val" / f"{name}.png", 5)
        refined = read_label_png(seg_run / "segmentation_crf" / "val" / f"{name}.png", 5)
        assert plain.shape == refined.shape == read_label_png(source.mask_path(name)).shape
        assert plain.max() < 5 and refined.max() < 5  # every pixel gets a class, none 255
    first = source.ids("val")[0]
    height, width = read_label_png(source.mask_path(first)).shape
    picture = Image.open(seg_run / "vis" / "segmentation" / f"{first}.jpg")
    assert picture.size == (4 * width, height)  # image | prediction | CRF | ground truth
    result = run("eval_cam.py", *data_args(toy, seg_run, "val"), "--label-dir", seg_run / "segmentation" / "val",
                 "--tag", "segmentation (val)")
    assert "segmentation (val): mIoU" in result.stdout


@pytest.mark.slow
def test_infer_seg_test_split_fills_the_server_layout(toy, seg_run):
    run("infer_seg.py", *data_args(toy, seg_run, "test"), "--device", "cpu", "--num-workers", "0",
        "--scales", "1.0")
    server = seg_run / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    names = build_source("custom", toy).ids("test")
    assert sorted(p.stem for p in server.glob("*.png")) == sorted(names)
    for name in names:
        assert np.array_equal(read_label_png(server / f"{name}.png"),
                              read_label_png(seg_run / "segmentation" / "test" / f"{name}.png"))
        assert Image.open(server / f"{name}.png").mode == "P"


def labels_with(toy, work, name, damage):
    """The ground truth as pseudo-labels, with the PNG of ``name`` damaged by ``damage(path)``."""
    shutil.copytree(toy / "SegmentationClass", work / "pseudo_labels")
    damage(work / "pseudo_labels" / f"{name}.png")
    return work


@pytest.mark.slow
@pytest.mark.parametrize("damage, message", [
    (lambda path: path.unlink(), "no label PNG for 1 of the 8 images"),
    (lambda path: path.write_bytes(b"not a png"), "cannot read"),
    (lambda path: write_label_png(path, np.full((48, 64), 9, np.uint8)), "values [9]"),
    (lambda path: write_label_png(path, np.zeros((40, 64), np.uint8)), "differs from its image"),
])
def test_train_seg_bad_labels_are_one_line_errors(toy, reference, tmp_path, damage, message):
    name = build_source("custom", toy).ids("train")[1]
    work = labels_with(toy, tmp_path, name, damage)
    result = train_seg(toy, reference, work)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and message in line
    if "no label PNG" not in message:
        assert f"{name}.png" in line
    assert not (work / "ckpt").exists() or not any((work / "ckpt").iterdir())


@pytest.mark.slow
def test_infer_seg_refuses_a_checkpoint_of_another_kind(toy, tmp_path):
    torch.save({"kind": "affinity", "arch": "irn", "model": {}}, tmp_path / "affinity.pth")
    result = run("infer_seg.py", *data_args(toy, tmp_path, "val"), "--device", "cpu",
                 "--checkpoint", tmp_path / "affinity.pth", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'affinity.pth'}: checkpoint has kind='affinity', this run needs 'seg'")
    assert not (tmp_path / "segmentation" / "val").exists() or not any((tmp_path / "segmentation" / "val").iterdir())


@pytest.mark.slow
def test_train_seg_refuses_pixel_supervised_weights(toy, reference, tmp_path):
    torch.save({"classifier.4.weight": torch.zeros(21, 256)}, tmp_path / "coco_with_voc_labels.pth")
    shutil.copytree(toy / "SegmentationClass", tmp_path / "pseudo_labels")
    result = train_seg(toy, reference, tmp_path, "--pretrained", tmp_path / "coco_with_voc_labels.pth")
    assert result.returncode == 2 and "pixel labels" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_train_seg_deeplabv3_needs_two_images_per_process(toy, reference, tmp_path):
    shutil.copytree(toy / "SegmentationClass", tmp_path / "pseudo_labels")
    result = train_seg(toy, reference, tmp_path, "--batch-size", "1", "--arch", "deeplabv3")
    assert result.returncode == 2
    assert "at least 2 images per process: --batch-size 1 over 1 processes" in result.stderr.strip().splitlines()[-1]
