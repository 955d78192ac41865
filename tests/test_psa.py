"""PSA's system (docs/method.md §5.10, §9): the plain CAM classifier, its inference, AffinityNet's four
parameter groups, the colour jitter, the recipes as defaults, and the scripts end to end."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import train_affinity
import train_cam
from data.transforms import ColorJitter, TrainTransform, scaled_images
from engine.train import build_optimizer
from net.affinity import AffinityNet
from net.cam import CAMNet, psa_cam
from net.sipe import SIPENet, build_classifier, classifier_losses, inference_maps
from tests.scripts import REPO, assert_error, run
from tests.test_sipe import weights_file
from tools.cam_files import load_cam

PSA_JITTER = (0.3, 0.3, 0.3, 0.1)


# ---- AffinityNet's four parameter groups -------------------------------------------------------------

def hand_groups(model):
    """PSA's groups written out for AffinityNet on torchvision's ResNet-50: every conv and
    BatchNorm tensor by name (pretrained: the backbone; new: side convs and fuse)."""
    groups = {"pretrained weights": [], "pretrained biases": [], "new weights": [], "new biases": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        age = "pretrained" if name.startswith("backbone.") else "new"
        kind = "biases" if name.endswith(".bias") else "weights"
        groups[f"{age} {kind}"].append(name)
    return groups


def group_names(model):
    names = {id(p): n for n, p in model.named_parameters()}
    keys = ["pretrained weights", "pretrained biases", "new weights", "new biases"]
    return {key: [names[id(p)] for p in group["params"]] for key, group in zip(keys, model.param_groups())}


def test_affinitynet_groups_from_imagenet_weights_freeze_the_stem_and_every_batchnorm(tmp_path):
    model = AffinityNet(pretrained=str(weights_file(tmp_path)[0]))
    groups = group_names(model)
    assert groups == hand_groups(model)
    backbone = dict(model.backbone.named_parameters())
    # torchvision's convs have no bias and PSA freezes BatchNorm: the pretrained weights are the convs of
    # layer1..layer4, nothing else
    convs = [f"backbone.{n}" for n, m in model.backbone.named_modules() if isinstance(m, nn.Conv2d)
             and not n.startswith("conv1")]
    assert sorted(groups["pretrained weights"]) == sorted(f"{n}.weight" for n in convs)
    assert groups["pretrained biases"] == [] and groups["new biases"] == []
    assert groups["new weights"] == ["side.0.weight", "side.1.weight", "side.2.weight", "fuse.weight"]
    assert not backbone["conv1.weight"].requires_grad and not backbone["layer3.0.bn1.weight"].requires_grad


def test_affinitynet_groups_without_weights_train_batchnorm_with_psa_bias_rule():
    model = AffinityNet(pretrained="none")
    groups = group_names(model)
    assert groups == hand_groups(model)
    assert "backbone.bn1.weight" in groups["pretrained weights"]
    assert "backbone.layer4.2.bn3.bias" in groups["pretrained biases"]
    assert len(groups["pretrained biases"]) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_optimizer_gives_each_group_its_lr_and_decay():
    model = AffinityNet(pretrained="none")
    args = train_affinity.parse_args(["--arch", "affinitynet", "--data-root", "x", "--work-dir", "y"])
    optimizer = build_optimizer(model, args.lr, args.new_layer_lr_mult, args.weight_decay, args.momentum)
    settings = [(g["lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups]
    sizes = [len(group["params"]) for group in model.param_groups() if group["params"]]
    # pretrained weights x1 with decay, pretrained biases x2 without, new weights x10 with decay
    assert settings == [(0.1, 5e-4, sizes[0]), (0.2, 0.0, sizes[1]), (pytest.approx(1.0), 5e-4, sizes[2])]


def test_optimizer_of_psa_new_biases_is_twenty_times_lr():
    class WithBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.old, self.new = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

        def param_groups(self):
            from net.parameters import psa_groups
            return psa_groups([self.old], [self.new])

    args = train_affinity.parse_args(["--arch", "affinitynet", "--data-root", "x", "--work-dir", "y"])
    optimizer = build_optimizer(WithBias(), args.lr, args.new_layer_lr_mult, args.weight_decay, args.momentum)
    got = [(round(g["lr"], 6), g["weight_decay"], g["params"][0].shape) for g in optimizer.param_groups]
    assert got == [(0.1, 5e-4, (4, 3, 1, 1)), (0.2, 0.0, (4,)), (1.0, 5e-4, (2, 4, 1, 1)), (2.0, 0.0, (2,))]


# ---- the recipes as defaults ----------------------------------------------------------------------

def test_train_cam_defaults_follow_the_method():
    base = ["--data-root", "x", "--work-dir", "y"]
    cam = train_cam.parse_args(base + ["--method", "cam"])
    assert (cam.epochs, cam.crop_size, tuple(cam.resize_long), cam.weight_decay, cam.batch_size, cam.lr,
            cam.new_layer_lr_mult, cam.momentum, cam.clip_grad, tuple(cam.color_jitter)) == \
        (15, 448, (256, 512), 5e-4, 16, 0.1, 10.0, 0.0, 0.0, PSA_JITTER)
    sipe = train_cam.parse_args(base)
    assert (sipe.epochs, sipe.crop_size, tuple(sipe.resize_long), sipe.weight_decay, sipe.clip_grad,
            sipe.color_jitter) == (5, 512, (320, 640), 1e-4, 1.0, None)
    assert train_cam.parse_args(base + ["--method", "cam", "--epochs", "2"]).epochs == 2


def test_train_affinity_defaults_follow_the_arch():
    base = ["--data-root", "x", "--work-dir", "y"]
    psa = train_affinity.parse_args(base + ["--arch", "affinitynet"])
    assert (psa.epochs, psa.crop_size, psa.batch_size, psa.weight_decay, psa.resize_long, psa.scale_range,
            tuple(psa.color_jitter)) == (8, 448, 8, 5e-4, None, None, PSA_JITTER)
    irn = train_affinity.parse_args(base)
    assert (irn.weight_decay, tuple(irn.scale_range), irn.color_jitter, irn.radius) == (1e-4, (0.5, 1.5), None, 10)


@pytest.mark.slow
@pytest.mark.parametrize("script, flag, value, shown", [
    ("train_cam.py", "--method", "cam", "(default: 448)"),
    ("train_affinity.py", "--arch", "affinitynet", "(default: 0.0005)"),
])
def test_help_shows_the_chosen_recipe(script, flag, value, shown):
    result = subprocess.run([sys.executable, str(REPO / script), flag, value, "--help"], cwd=REPO,
                            capture_output=True, text=True, check=True)
    text = " ".join(result.stdout.split())  # argparse wraps help lines at the terminal width
    assert shown in text and f"those of --recipe published {flag} {value};" in text
    assert "--color-jitter" in result.stdout


# ---- colour jitter -----------------------------------------------------------------------------------

def test_color_jitter_changes_the_image_never_the_labels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (40, 60), dtype=np.uint8)
    jittered = TrainTransform(None, 48, color_jitter=PSA_JITTER)
    still = TrainTransform(None, 48, color_jitter=PSA_JITTER)
    still.steps = [ColorJitter(0, 0, 0, 0) if isinstance(s, ColorJitter) else s for s in still.steps]
    for seed in range(5):
        a_image, a_labels = jittered.with_labels(image, labels, np.random.default_rng(seed))
        b_image, b_labels = still.with_labels(image, labels, np.random.default_rng(seed))
        assert torch.equal(a_labels, b_labels)  # same geometry, same labels
        assert not torch.equal(a_image, b_image)


def test_color_jitter_draws_within_its_ranges():
    gray = np.full((8, 8, 3), 100, dtype=np.uint8)
    for seed in range(20):
        out, labels = ColorJitter(0.3, 0, 0, 0)(gray, "labels", np.random.default_rng(seed))
        assert labels == "labels" and 70 <= out.mean() <= 130 and np.ptp(out) == 0
        # a gray image has no hue or saturation to change
        out, _ = ColorJitter(0, 0, 0.3, 0.1)(gray, None, np.random.default_rng(seed))
        assert np.array_equal(out, gray)
    with pytest.raises(ValueError):
        ColorJitter(0.3, 0.3, 0.3, 0.6)


# ---- the plain CAM classifier and PSA's inference -----------------------------------------------------

def test_plain_cam_classifier_has_no_prototype_branch_and_one_loss():
    model = build_classifier(4, "cam", pretrained="none")
    assert type(model) is CAMNet and not any(name.startswith("side") for name, _ in model.named_parameters())
    batch = {"image": torch.randn(2, 3, 64, 64), "label": torch.tensor([[1.0, 0, 1], [0, 1, 0]]),
             "valid": torch.ones(2, 64, 64)}
    losses = classifier_losses(model, batch)
    assert list(losses) == ["cls"]
    score = model.raw_cam(batch["image"]).mean(dim=(2, 3))
    torch.testing.assert_close(losses["cls"], F.multilabel_soft_margin_loss(score, batch["label"]))
    assert type(build_classifier(4, "sipe", pretrained="none")) is SIPENet


def test_psa_inference_matches_a_direct_computation():
    torch.manual_seed(0)
    model = CAMNet(5, pretrained="none").eval()
    image = np.random.default_rng(1).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    keys = torch.tensor([0, 2, 4])
    scales = (1.0, 0.5, 1.5)
    got = psa_cam(model, scaled_images(image, scales), keys, (45, 61)).fused()

    total = torch.zeros(4, 45, 61, dtype=torch.float64)
    for scaled in scaled_images(image, scales):
        for flip in (False, True):
            x = scaled.flip(-1) if flip else scaled
            b = model.backbone
            with torch.no_grad():
                for module in (b.conv1, b.bn1, b.relu, b.maxpool, b.layer1, b.layer2, b.layer3, b.layer4,
                               model.classifier, torch.relu):
                    x = module(x)
            cam = F.interpolate(x, (45, 61), mode="bilinear", align_corners=False)[0].double()
            total += cam.flip(-1) if flip else cam
    labels = torch.zeros(4, 1, 1, dtype=torch.float64)
    labels[[1, 3]] = 1  # classes 2 and 4 are channels 1 and 3
    masked = total * labels
    normalised = masked / (masked.amax(dim=(1, 2), keepdim=True) + 1e-5)
    foreground = normalised[[1, 3]]
    expected = torch.cat([1 - foreground.max(dim=0, keepdim=True).values, foreground])
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)
    assert inference_maps(model, scaled_images(image, scales), keys, (45, 61)).keys() == {"cam"}


# ---- the scripts: --method cam end to end, and bad input ---------------------------------------------

TINY = ["--pretrained", "none", "--no-frozen", "--device", "cpu", "--num-workers", "0", "--crop-size", "64",
        "--resize-long", "48", "64", "--batch-size", "4", "--epochs", "1"]


@pytest.mark.slow
def test_method_cam_through_the_scripts_and_its_bad_input(make_toy, tmp_path):
    toy = make_toy(num_train=8, num_val=4, size=(48, 64), seed=3)
    data = ["--dataset", "custom", "--data-root", toy, "--split", "train"]
    work = tmp_path / "psa"
    run("train_cam.py", *data, "--work-dir", work, "--method", "cam", *TINY)
    flags = json.loads((work / "args" / "train_cam.json").read_text())
    assert (flags["method"], flags["weight_decay"], flags["color_jitter"]) == ("cam", 5e-4, list(PSA_JITTER))
    checkpoint = torch.load(work / "ckpt" / "cam.pth", weights_only=False)
    assert checkpoint["method"] == "cam" and not any(k.startswith("side.") for k in checkpoint["model"])

    infer = ["--work-dir", work, "--device", "cpu", "--num-workers", "0", "--scales", "1.0", "0.5"]
    assert_error(run("make_cam.py", *data, *infer, "--all-maps", check=False), work / "ckpt" / "cam.pth",
                 "no prototype maps")
    run("make_cam.py", *data, *infer)
    names = (toy / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    for name in names:
        record = np.load(work / "cam" / f"{name}.npy", allow_pickle=True).item()
        assert record["method"] == "cam" and set(record["maps"]) == {"cam"}
        cam = load_cam(work / "cam" / f"{name}.npy")[1]
        # the plain CAM classifier's CAM row reads plain_cam, as SIPE's does: its final map
        assert np.array_equal(load_cam(work / "cam" / f"{name}.npy", "plain_cam")[1], cam)
        np.testing.assert_allclose(cam[0], 1 - cam[1:].max(axis=0), atol=2e-3)
        peaks = cam[1:].max(axis=(1, 2))  # max-normalised; 0 where the relu'd CAM is 0 everywhere
        assert np.all((np.abs(peaks - 1) < 2e-3) | (peaks == 0)), peaks
    result = run("eval_cam.py", *data, "--work-dir", work, "--map", "plain_cam", "--sweep", "--tag", "CAM",
                 "--score-workers", "0")
    assert "CAM: mIoU" in result.stdout
    first = work / "cam" / f"{names[0]}.npy"
    assert_error(run("eval_cam.py", *data, "--work-dir", work, "--map", "is_cam", "--score-workers", "0",
                     check=False), first, "no prototype maps")

    # a SIPE checkpoint over the plain CAM files: the two methods' files would mix
    sipe = tmp_path / "sipe"
    run("train_cam.py", *data, "--work-dir", sipe, "--method", "sipe", *TINY)
    assert_error(run("make_cam.py", *data, *infer, "--checkpoint", sipe / "ckpt" / "cam.pth", check=False),
                 work / "cam", r"another network, other data or other flags \(differs in inputs.checkpoint\)")
    # resuming a plain CAM classifier as SIPE (or the other way round) names the checkpoint
    stopped = tmp_path / "stopped"
    run("train_cam.py", *data, "--work-dir", stopped, "--method", "cam", "--stop-at-step", "1", *TINY)
    assert_error(run("train_cam.py", *data, "--work-dir", stopped, "--method", "sipe", "--resume", *TINY,
                     check=False), stopped / "ckpt" / "cam_last.pth", "method='cam'")
    # a checkpoint that says cam but holds SIPE's weights
    forged = torch.load(sipe / "ckpt" / "cam.pth", weights_only=False)
    forged["method"] = "cam"
    torch.save(forged, tmp_path / "forged.pth")
    assert_error(run("make_cam.py", *data, *infer, "--out-dir", tmp_path / "forged_cam", "--checkpoint",
                     tmp_path / "forged.pth", check=False), tmp_path / "forged.pth", "do not fit a CAMNet")
