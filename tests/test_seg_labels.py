"""Stages 5 and 6 through the real scripts on a tiny toy set: train_affinity (the reference run's
IRN; AffinityNet on labels copied from the ground truth), make_seg_labels with synthetic CAMs
(outputs, CRF, no-affinity mode, a sanity bound on easy input) and their errors on bad input."""
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from data.sources import build_source
from tests.reference import STEPS
from tests.scripts import assert_error, run
from tools.cam_files import load_cam, save_cam
from tools.io import read_image, read_label_png
from tools.palette import voc_palette

# every test here runs stage scripts, many on the shared reference run (tests/reference.py), which
# the xdist group makes once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reference")]


def tiny():
    """Flags of a four-step CPU training run (8 images, batch 2, one epoch)."""
    return ["--pretrained", "none", "--device", "cpu", "--num-workers", "0", "--resize-long", "48", "64",
            "--batch-size", "2", "--epochs", "1", "--log-every", "1"]


def data_args(root, work, split="train"):
    return ["--dataset", "custom", "--data-root", root, "--split", split, "--work-dir", work]


@pytest.fixture(scope="module")
def irn_run(reference):
    """The reference run: its IRN checkpoint, trained four steps on a frozen ResNet-18 of random
    weights, from the stage-4 labels."""
    return reference[1]


def gt_affinity_labels(toy, work):
    """Affinity labels = the ground-truth masks (0 background, class ids, 255 void)."""
    shutil.copytree(toy / "SegmentationClass", work / "affinity_labels")


def write_cams(toy, cam_dir, noise, seed=0, split="train"):
    """CAM files from the ground truth: one-hot of the mask over the image's keys (void pixels
    all zero), ``(1 - noise) * onehot + noise * uniform``, at the image size."""
    source = build_source("custom", toy)
    rng = np.random.default_rng(seed)
    for name in source.ids(split):
        gt = read_label_png(source.mask_path(name))
        keys = np.concatenate([[0], source.labels(name)])
        onehot = np.stack([gt == k for k in keys]).astype(np.float32)
        save_cam(cam_dir / f"{name}.npy", keys, (1 - noise) * onehot + noise * rng.random(onehot.shape))
    return source, source.ids(split)


@pytest.fixture(scope="module")
def uninformed_irn(toy, tmp_path_factory):
    """An IRN checkpoint trained four steps from random frozen weights on ground-truth labels:
    its boundary map says almost nothing (B ~ 0.25..0.45 everywhere)."""
    work = tmp_path_factory.mktemp("irn")
    gt_affinity_labels(toy, work)
    # crop 80: the stride-4 map is 20 x 20 and has pairs of IRN's training radius 10
    run("train_affinity.py", *data_args(toy, work), "--arch", "irn", "--crop-size", "80", *tiny())
    return work / "ckpt" / "affinity.pth"


def logged_losses(work):
    lines = [line for line in (work / "logs" / "train_affinity.log").read_text().splitlines() if " step " in line]
    return [{k: float(v) for k, v in re.findall(r"\b(bg|fg|neg) (\S+)", line)} for line in lines]


def test_train_affinity_irn_checkpoint(irn_run):
    checkpoint = torch.load(irn_run / "ckpt" / "affinity.pth", weights_only=False)
    assert checkpoint["kind"] == "affinity" and checkpoint["arch"] == "irn" and checkpoint["radius"] == 10
    assert checkpoint["crop_size"] == 80  # make_seg_labels pads its images to it (boundary_map)
    assert checkpoint["step"] == STEPS  # 8 images, batch 2, one epoch
    assert any(key.startswith("branches.") for key in checkpoint["model"])
    assert (irn_run / "ckpt" / "affinity_last.pth").is_file()
    losses = logged_losses(irn_run)
    assert len(losses) == STEPS and all(set(entry) == {"bg", "fg", "neg"} for entry in losses)
    assert all(np.isfinite(list(entry.values())).all() for entry in losses)
    assert any(value > 0 for entry in losses for value in entry.values())


def test_train_affinity_affinitynet_and_its_walk(toy, tmp_path):
    # crop 96: the stride-8 map is 12 x 12 and has radius-5 pairs (a 64 crop gives 8 x 8, which has none)
    work = tmp_path / "psa"
    gt_affinity_labels(toy, work)
    run("train_affinity.py", *data_args(toy, work), "--arch", "affinitynet", "--crop-size", "96", "--no-frozen",
        *tiny())
    checkpoint = torch.load(work / "ckpt" / "affinity.pth", weights_only=False)
    assert checkpoint["arch"] == "affinitynet" and checkpoint["model"]["fuse.weight"].shape == (448, 448, 1, 1)
    losses = logged_losses(work)
    assert len(losses) == STEPS
    assert all(np.isfinite(list(entry.values())).all() for entry in losses)
    for kind in ("bg", "fg", "neg"):  # every kind of pair occurs in the toy labels
        assert any(entry[kind] > 0 for entry in losses), (kind, losses)

    source, names = write_cams(toy, work / "cam", noise=0.3)
    run("make_seg_labels.py", *data_args(toy, work), "--device", "cpu", "--steps", "16")
    for name in names:
        labels = read_label_png(work / "pseudo_labels" / f"{name}.png")
        assert labels.shape == read_image(source.image_path(name)).shape[:2]
        assert set(np.unique(labels).tolist()) <= {0, *source.labels(name).tolist()}


def assert_label_pngs(folder, source, names):
    for name in names:
        path = folder / f"{name}.png"
        with Image.open(path) as img:
            assert img.mode == "P" and img.getpalette()[:48] == voc_palette()[:48]
        labels = read_label_png(path)
        assert labels.shape == read_image(source.image_path(name)).shape[:2]
        assert set(np.unique(labels).tolist()) <= {0, *source.labels(name).tolist()}, (path, np.unique(labels))
    assert sorted(p.stem for p in folder.glob("*.png")) == sorted(names)
    assert not list(folder.glob(".*.tmp*"))


def test_make_seg_labels_outputs_crf_and_visualisation(toy, irn_run, tmp_path):
    work = tmp_path / "seg"
    source, names = write_cams(toy, work / "cam", noise=0.3, seed=1)
    args = [*data_args(toy, work), "--checkpoint", irn_run / "ckpt" / "affinity.pth", "--device", "cpu",
            "--crf", "--crf-workers", "1", "--visualize", "1"]
    run("make_seg_labels.py", *args)
    outputs = [work / "pseudo_labels", work / "pseudo_labels_crf"]
    for folder in outputs:
        assert_label_pngs(folder, source, names)
    pictures = list((work / "vis" / "seg").iterdir())
    assert [p.name for p in pictures] == [f"{names[0]}.jpg"]
    height, width = read_image(source.image_path(names[0])).shape[:2]
    assert read_image(pictures[0]).shape == (height, 3 * width, 3)  # image | labels | CRF labels


def test_make_seg_labels_without_affinity(toy, tmp_path):
    work = tmp_path / "noaff"
    source, names = write_cams(toy, work / "cam", noise=0.5, seed=2)
    assert not (work / "ckpt").exists()
    run("make_seg_labels.py", *data_args(toy, work), "--no-affinity", "--crf", "--crf-workers", "0",
        "--device", "cpu")
    assert_label_pngs(work / "pseudo_labels", source, names)
    assert_label_pngs(work / "pseudo_labels_crf", source, names)
    for name in names:  # no walk: the labels are the CAM's argmax
        keys, cam = load_cam(work / "cam" / f"{name}.npy")
        assert np.array_equal(read_label_png(work / "pseudo_labels" / f"{name}.png"), keys[cam.argmax(0)])


def test_walk_on_ground_truth_cams_stays_close_to_the_ground_truth(toy, uninformed_irn, tmp_path):
    # The boundary net here has had four steps on a random frozen backbone, so its map is
    # uninformative (B ~ 0.25..0.45 everywhere).  At docs/method.md §10's beta 10 the walk is then a plain
    # blur over the whole stride-4 map: on this set it eats the small toy objects (foreground
    # recall 0.67) while pixel accuracy stays 0.966, because 91% of the pixels are background --
    # so accuracy alone proves little.  With --beta 40 an uninformative boundary
    # lets almost nothing through (0.75 ** 40 < 1e-5), so the result must be the ground truth
    # back through the script's plumbing: CAM pooling to the net's stride, (1 - B) ** 1.5
    # weighting, walk, bilinear upsampling to the image, argmax, keys.  Observed: accuracy
    # 0.986, foreground recall 0.92 (lost only on thin parts at stride 4).  The bounds fail on
    # misplaced maps (flip, transposition, wrong resize), scrambled keys or a lost foreground.
    work = tmp_path / "easy"
    source, names = write_cams(toy, work / "cam", noise=0.0)
    run("make_seg_labels.py", *data_args(toy, work), "--checkpoint", uninformed_irn,
        "--device", "cpu", "--beta", "40")
    correct = total = fg_correct = fg_total = 0
    for name in names:
        gt = read_label_png(source.mask_path(name))
        pred = read_label_png(work / "pseudo_labels" / f"{name}.png")
        known = gt != 255
        correct += (pred[known] == gt[known]).sum()
        total += known.sum()
        fg = known & (gt > 0)
        fg_correct += (pred[fg] == gt[fg]).sum()
        fg_total += fg.sum()
    background_share = 1 - fg_total / total
    assert correct / total > max(0.97, background_share + 0.5 * (1 - background_share)), correct / total
    assert fg_correct / fg_total > 0.8, fg_correct / fg_total


# ---- bad input ------------------------------------------------------------------------------------

def missing_cam(cam_dir, name, shape, tmp_path):
    (cam_dir / f"{name}.npy").unlink()
    return cam_dir / f"{name}.npy", "CAM file not found", []


def wrong_size(cam_dir, name, shape, tmp_path):
    save_cam(cam_dir / f"{name}.npy", [0, 1], np.zeros((2, shape[0] - 1, shape[1])))
    return cam_dir / f"{name}.npy", r"map size .* differs from its image", []


def keys_out_of_range(cam_dir, name, shape, tmp_path):
    save_cam(cam_dir / f"{name}.npy", [0, 9], np.zeros((2, *shape)))
    return cam_dir / f"{name}.npy", r"keys \[0, 9\] are not 0 followed by sorted class ids < 5", []


def cam_checkpoint(cam_dir, name, shape, tmp_path):
    path = tmp_path / "cam.pth"
    torch.save({"kind": "cam", "model": {}}, path)
    return path, "checkpoint has kind='cam', this run needs 'affinity'", ["--checkpoint", path]


@pytest.mark.parametrize("breakage, crf", [(missing_cam, True), (wrong_size, False), (keys_out_of_range, False),
                                           (cam_checkpoint, False)])
def test_make_seg_labels_bad_input_is_one_line_and_exit_2(toy, irn_run, tmp_path, breakage, crf):
    work = tmp_path / "run"
    source, names = write_cams(toy, work / "cam", noise=0.3)
    bad = names[len(names) // 2]
    path, expected, extra = breakage(work / "cam", bad, read_image(source.image_path(bad)).shape[:2], tmp_path)
    flags = ["--crf", "--crf-workers", "0"] if crf else []
    result = run("make_seg_labels.py", *data_args(toy, work), "--device", "cpu", "--checkpoint",
                 irn_run / "ckpt" / "affinity.pth", *flags, *extra, check=False)
    assert_error(result, path, expected)
    for folder in ("pseudo_labels", *(["pseudo_labels_crf"] if crf else [])):
        assert not (work / folder / f"{bad}.png").exists()
        assert not list((work / folder).glob(".*.tmp*"))
    if breakage is cam_checkpoint:  # found before any image
        assert not list((work / "pseudo_labels").glob("*.png"))


def test_train_affinity_refuses_a_crop_without_pixel_pairs(toy, tmp_path):
    work = tmp_path / "run"
    gt_affinity_labels(toy, work)
    # stride 8: a 64 crop gives an 8x8 map, too narrow for a pair of radius 5 (it needs 9 columns)
    result = run("train_affinity.py", *data_args(toy, work), "--arch", "affinitynet", "--crop-size", "64",
                 "--no-frozen", *tiny(), check=False)
    assert result.returncode == 2
    assert "--crop-size 64: the 8x8 map of affinitynet at stride 8 has no pixel pairs" in result.stderr
    assert not (work / "ckpt").exists()
