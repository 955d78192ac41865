"""Stages 1-3 end to end through the real scripts on a tiny toy set, resume, and bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.checkpoint import load_checkpoint
from tests.scripts import REPO, assert_error, run
from tools.cam_files import load_cam
from tools.io import read_image, read_label_png
from tools.metrics import confusion_matrix, iou

pytestmark = pytest.mark.slow  # every test here runs stage scripts or drivers

TINY_TRAIN = ["--pretrained", "none", "--no-frozen", "--device", "cpu", "--num-workers", "0", "--crop-size", "64",
              "--resize-long", "48", "64", "--batch-size", "4", "--log-every", "1"]


@pytest.fixture(scope="module")
def toy(make_toy):
    return make_toy(num_train=8, num_val=4, size=(48, 64), seed=3)


def data_args(root, split="train"):
    return ["--dataset", "custom", "--data-root", root, "--split", split]


def test_stages_1_to_3_write_the_spec_artifacts(toy, tmp_path):
    work = tmp_path / "run"
    run("train_cam.py", *data_args(toy), "--work-dir", work, "--method", "ae_sipe", "--epochs", "1",
        *TINY_TRAIN)
    assert (work / "ckpt" / "cam.pth").is_file() and (work / "ckpt" / "cam_last.pth").is_file()
    last = torch.load(work / "ckpt" / "cam_last.pth", weights_only=False)
    assert last["step"] == 2 and {"model", "optimizer", "rng"} <= set(last)
    assert last["frozen"] is False  # --no-frozen: every layer trained, as the checkpoint records
    assert json.loads((work / "args" / "train_cam.json").read_text())["method"] == "ae_sipe"
    assert (work / "logs" / "train_cam.log").read_text().count("step ") >= 2

    run("make_cam.py", *data_args(toy), "--work-dir", work, "--device", "cpu", "--num-workers", "0",
        "--scales", "1.0", "0.5", "--all-maps")
    assert json.loads((work / "args" / "make_cam.json").read_text())["write_workers"] == 0  # on the CPU
    names = (toy / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    files = sorted((work / "cam").glob("*.npy"))
    assert [f.stem for f in files] == sorted(names)
    for name in names:
        record = np.load(work / "cam" / f"{name}.npy", allow_pickle=True).item()
        keys = record["keys"]
        assert keys.dtype == np.int64 and keys[0] == 0 and np.all(np.diff(keys) > 0) and len(keys) >= 2
        height, width = read_image(toy / "JPEGImages" / f"{name}.jpg").shape[:2]
        assert record["format"] == 2 and sorted(record["maps"]) == ["cam", "is_cam", "plain_cam"]
        for map_name in ("cam", "plain_cam", "is_cam"):
            cam = load_cam(work / "cam" / f"{name}.npy", map_name)[1]
            assert cam.dtype == np.float32 and cam.shape == (len(keys), height, width)
            assert cam.min() >= 0 and cam.max() <= 1
            stored = record["maps"][map_name]  # the two scales' stride-16 maps, fused on load
            assert stored["codec"] == "scales" and stored["size"] == (height, width)
            assert [scale["shape"] for scale in stored["scales"]] == [
                (len(keys) - (map_name == "plain_cam"), -(-round(height * s) // 16), -(-round(width * s) // 16))
                for s in (1.0, 0.5)]

    for map_name, tag in (("plain_cam", "CAM"), ("is_cam", "IS-CAM"), ("cam", "AE-IS-CAM")):
        result = run("eval_cam.py", *data_args(toy), "--work-dir", work, "--map", map_name, "--tag", tag,
                     "--score-workers", "1", "--bg-scale", "0.8")
        assert f"{tag}: mIoU" in result.stdout
    results = json.loads((work / "results.json").read_text())
    assert list(results) == ["CAM", "IS-CAM", "AE-IS-CAM"]
    for entry in results.values():
        assert set(entry["iou"]) == {"background", "disc", "square", "triangle", "cross"}
        assert entry["images"] == len(names)
    # the AE-IS-CAM row against its definition (docs/method.md §7): one confusion matrix over every pixel of
    # the split, the argmax of the map with the background scaled by 0.8
    confusion = np.zeros((5, 5), np.int64)
    for name in names:
        keys, cam = load_cam(work / "cam" / f"{name}.npy", "cam")
        cam[0] *= 0.8
        predicted = keys[cam.argmax(axis=0)]
        confusion += confusion_matrix(predicted, read_label_png(toy / "SegmentationClass" / f"{name}.png"), 5)
    per_class, miou = iou(confusion)
    assert results["AE-IS-CAM"]["miou"] == pytest.approx(100 * miou, abs=0.005)
    assert results["AE-IS-CAM"]["iou"]["disc"] == pytest.approx(100 * per_class[1], abs=0.005)
    assert "| AE-IS-CAM |" in (work / "results.md").read_text()
    # the background factor: 0 is honoured, and without the flag it is the recorded method's (AE-SIPE: 0.8)
    for tag, flags in (("bg 0", ["--bg-scale", "0"]), ("bg by method", [])):
        run("eval_cam.py", *data_args(toy), "--work-dir", work, "--map", "cam", "--tag", tag, "--score-workers", "0",
            *flags)
    results = json.loads((work / "results.json").read_text())
    assert results["bg 0"]["note"] == "bg x 0.0" and results["bg by method"]["note"] == "bg x 0.8"
    assert json.loads((work / "args" / "eval_cam.json").read_text())["bg_scale"] == 0.8

    # a make_cam run of other flags stops without touching the finished images
    before = {f: f.stat().st_mtime_ns for f in files}
    cams = ["make_cam.py", *data_args(toy), "--work-dir", work, "--device", "cpu", "--num-workers", "0"]
    assert_error(run(*cams, check=False), work / "cam", r"settings.all_maps: True -> False, settings.scales")
    assert {f: f.stat().st_mtime_ns for f in files} == before


def test_the_seed_background_factor_travels_with_the_checkpoint(toy, tmp_path):
    """train_cam's --seed-bg-scale shapes the structure seeds, in training and in make_cam's
    IS-CAM: make_cam rebuilds the classifier with the value it trained with."""
    from net.sipe import classifier_of

    work = tmp_path / "bg"
    run("train_cam.py", *data_args(toy), "--work-dir", work, "--method", "sipe", "--epochs", "1",
        "--seed-bg-scale", "0.3", "--backbone", "resnet18", *TINY_TRAIN)
    checkpoint = load_checkpoint(work / "ckpt" / "cam.pth")
    assert checkpoint["seed_bg_scale"] == 0.3
    assert classifier_of(checkpoint, 5).seed_bg_scale == 0.3
    checkpoint["bg_scale"] = checkpoint.pop("seed_bg_scale")  # written before the rename: still read
    assert classifier_of(checkpoint, 5).seed_bg_scale == 0.3
    del checkpoint["bg_scale"]  # a checkpoint written before it was recorded: the default
    assert classifier_of(checkpoint, 5).seed_bg_scale == 0.5


def test_amp_and_channels_last_on_the_cpu(toy, tmp_path):
    work = tmp_path / "amp"
    run("train_cam.py", *data_args(toy), "--work-dir", work, "--method", "ae_sipe", "--epochs", "1", "--amp",
        "--channels-last", *TINY_TRAIN)
    weights = torch.load(work / "ckpt" / "cam.pth", weights_only=False)["model"]
    floats = [w for w in weights.values() if w.is_floating_point()]
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in floats)
    run("make_cam.py", *data_args(toy), "--work-dir", work, "--device", "cpu", "--num-workers", "0",
        "--scales", "1.0", "--amp", "--channels-last")
    for path in sorted((work / "cam").glob("*.npy")):
        keys, cam = load_cam(path)
        height, width = read_image(toy / "JPEGImages" / f"{path.stem}.jpg").shape[:2]
        assert cam.shape == (len(keys), height, width)
        assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1


def test_torchrun_two_processes_train_and_split_inference(toy, tmp_path):
    work = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for script, args in (("train_cam.py", ["--epochs", "1", *TINY_TRAIN]),
                         ("make_cam.py", ["--device", "cpu", "--num-workers", "0", "--scales", "1.0"])):
        result = subprocess.run([*torchrun, script, *data_args(toy), "--work-dir", str(work), *args], cwd=REPO,
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
    # the same CAMs as one process makes from the same checkpoint, with one thread as each torchrun
    # process has (torch's CPU kernels may sum in another order with another number of threads),
    # and with the files written by a pool of two processes instead of the main one
    single = tmp_path / "single"
    run("make_cam.py", *data_args(toy), "--work-dir", work, "--out-dir", single, "--device", "cpu",
        "--num-workers", "0", "--scales", "1.0", "--write-workers", "2", env={"OMP_NUM_THREADS": "1"})
    assert json.loads((work / "args" / "make_cam.json").read_text())["write_workers"] == 2
    split_files = sorted((work / "cam").glob("*.npy"))
    assert len(split_files) == 8
    for path in split_files:
        assert path.read_bytes() == (single / path.name).read_bytes()


def broken_copy(toy, tmp_path, breakage):
    """A copy of the toy set with one thing broken by ``breakage(root)``."""
    root = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(toy), str(root)], check=True)
    breakage(root)
    return root


def first_id(root):
    return (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]


def unlabelled(root):
    name = first_id(root)
    (root / "Annotations" / f"{name}.xml").write_text("<annotation></annotation>")
    from tools.io import write_label_png
    write_label_png(root / "SegmentationClass" / f"{name}.png", np.zeros((8, 8), np.uint8))


@pytest.mark.parametrize("breakage, expected", [
    (lambda root: (root / "JPEGImages" / f"{first_id(root)}.jpg").write_bytes(b"not a jpeg"),
     r"\.jpg: cannot read image"),
    (lambda root: (root / "ImageSets" / "Segmentation" / "train.txt").write_text("toy_9999\n"),
     r"train\.txt: id 'toy_9999' has no image"),
    (unlabelled, r"no (foreground )?class"),
])
def test_bad_input_is_one_clear_line_and_exit_2(toy, tmp_path, breakage, expected):
    import re
    root = broken_copy(toy, tmp_path, breakage)
    result = run("train_cam.py", *data_args(root), "--work-dir", tmp_path / "run", "--epochs", "1",
                 *TINY_TRAIN, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and re.search(expected, lines[-1]), result.stderr[-2000:]
    assert not (tmp_path / "run" / "ckpt").exists()


def test_missing_dataset_root_and_weights(tmp_path):
    result = run("train_cam.py", "--dataset", "voc", "--data-root", tmp_path / "nowhere", "--work-dir",
                 tmp_path / "run", check=False)
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "VOCtrainval" in result.stderr
    result = run("make_cam.py", "--dataset", "custom", "--data-root", tmp_path / "nowhere", "--work-dir",
                 tmp_path / "run", check=False)
    assert result.returncode == 2 and "python -m data.toy" in result.stderr


def test_missing_weights_file_offline(toy, tmp_path):
    result = run("train_cam.py", *data_args(toy), "--work-dir", tmp_path / "run",
                 "--pretrained", tmp_path / "resnet50.pth", check=False)
    assert result.returncode == 2 and "resnet50.pth: weights file not found" in result.stderr
