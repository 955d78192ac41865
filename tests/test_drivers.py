"""The whole pipeline through the real drivers on a tiny toy set (SPEC 1, 2)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.scripts import REPO
from tools.io import read_label_png

pytestmark = pytest.mark.slow  # every test here runs stage scripts or drivers

TINY = ["--toy-images", "8", "--toy-image-size", "64",
        "--train-cam", "--epochs 1 --crop-size 64 --resize-long 48 64 --batch-size 4 --num-workers 0",
        "--make-cam", "--scales 1.0 --num-workers 0",
        "--train-affinity", "--epochs 1 --crop-size 80 --batch-size 4 --num-workers 0",
        "--train-seg", "--iterations 2 --crop-size 64 --batch-size 4 --num-workers 0",
        "--infer-seg", "--scales 1.0 --num-workers 0"]
SEGMENTATION_ROWS = ["segmentation (val)", "segmentation + CRF (val)"]


def drive(script, work_dir, *args):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(REPO / script), "--toy", "--work-dir", str(work_dir), *TINY, *args],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_run_voc_toy_goes_through_every_stage_and_skips_finished_ones(tmp_path):
    work = tmp_path / "voc"
    stdout = drive("run_voc.sh", work)
    results = json.loads((work / "results.json").read_text())
    assert list(results) == ["CAM", "IS-CAM", "AE-IS-CAM", "affinity labels", "random walk", "random walk + CRF",
                             *SEGMENTATION_ROWS]
    assert 0 < results["affinity labels"]["coverage"] <= 100
    assert "| random walk + CRF |" in stdout  # the ladder is printed at the end
    names = (work / "toy_data" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert len(names) == 8
    for folder, suffix in (("cam", "npy"), ("affinity_labels", "png"), ("pseudo_labels", "png"),
                           ("pseudo_labels_crf", "png")):
        assert sorted(p.stem for p in (work / folder).glob(f"*.{suffix}")) == sorted(names), folder
    for name in names:
        gt = read_label_png(work / "toy_data" / "SegmentationClass" / f"{name}.png")
        labels = read_label_png(work / "pseudo_labels_crf" / f"{name}.png")
        assert labels.shape == gt.shape and set(np.unique(labels)) <= set(range(5))
    val_names = (work / "toy_data" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    for folder in ("segmentation/val", "segmentation_crf/val"):
        assert sorted(p.stem for p in (work / folder).glob("*.png")) == sorted(val_names), folder
    for stage in ("train_cam", "make_cam", "eval_cam", "make_affinity_labels", "train_affinity",
                  "make_seg_labels", "train_seg", "infer_seg"):
        assert (work / "args" / f"{stage}.json").is_file(), stage
    # the flags given to the driver reach the stage, after the toy settings
    assert json.loads((work / "args" / "train_seg.json").read_text())["iterations"] == 2

    outputs = sorted(p for p in work.rglob("*") if p.suffix in (".npy", ".png", ".pth"))
    before = {p: p.stat().st_mtime_ns for p in outputs}
    stdout = drive("run_voc.sh", work)
    assert "train_cam: " in stdout and "ckpt/cam.pth exists, skipped" in stdout
    assert "ckpt/affinity.pth exists, skipped" in stdout and "ckpt/seg.pth exists, skipped" in stdout
    assert {p: p.stat().st_mtime_ns for p in outputs} == before


def test_run_coco_toy_defaults_to_sipe_and_the_crf_labels_as_pseudo_labels(tmp_path):
    work = tmp_path / "coco"
    drive("run_coco.sh", work)
    results = json.loads((work / "results.json").read_text())
    assert list(results) == ["CAM", "IS-CAM", "affinity labels (pseudo-labels)", *SEGMENTATION_ROWS]
    assert json.loads((work / "args" / "train_cam.json").read_text())["method"] == "sipe"
    # stage 7 learns from the stage-4 labels
    assert json.loads((work / "args" / "train_seg.json").read_text())["label_dir"] == str(work / "affinity_labels")
    assert not (work / "ckpt" / "affinity.pth").exists() and not (work / "pseudo_labels").exists()
    # scored as labels with unsure pixels (255): on their labelled pixels, with their coverage
    assert 0 < results["affinity labels (pseudo-labels)"]["coverage"] <= 100


def test_run_voc_toy_psa_route_plain_cam_and_affinitynet(tmp_path):
    work = tmp_path / "psa"
    stdout = drive("run_voc.sh", work, "--method", "cam", "--affinity", "affinitynet")
    results = json.loads((work / "results.json").read_text())
    assert list(results) == ["CAM", "affinity labels", "random walk", "random walk + CRF", *SEGMENTATION_ROWS]
    assert results["CAM"]["note"].startswith("bg threshold")  # the plain CAM's row is the sweep's best
    assert "| random walk + CRF |" in stdout
    flags = {stage: json.loads((work / "args" / f"{stage}.json").read_text())
             for stage in ("train_cam", "make_cam", "make_affinity_labels", "train_affinity")}
    assert flags["train_cam"]["method"] == "cam" and flags["train_cam"]["color_jitter"] == [0.3, 0.3, 0.3, 0.1]
    assert not flags["make_cam"]["all_maps"] and flags["make_affinity_labels"]["mode"] == "psa"
    psa = flags["train_affinity"]
    assert (psa["arch"], psa["weight_decay"], psa["resize_long"], psa["scale_range"]) == \
        ("affinitynet", 5e-4, None, None)
    record = np.load(next((work / "cam").glob("*.npy")), allow_pickle=True).item()
    assert record["method"] == "cam" and "is_cam" not in record


@pytest.mark.parametrize("args, expected", [
    ([], "runs/voc_ae_sipe"),
    (["--method", "sipe"], "runs/voc_sipe"),
    (["--method", "cam", "--affinity", "affinitynet"], "runs/voc_cam_affinitynet"),
    (["--toy"], "runs/toy"),
    (["--toy", "--method", "cam", "--affinity", "affinitynet"], "runs/toy_cam_affinitynet"),
    (["--toy", "--affinity", "none"], "runs/toy_ae_sipe_none"),
])
def test_default_run_directory_names_the_method_and_a_non_default_affinity(args, expected):
    # run_voc.sh's settings, with the stages replaced by printing the run directory
    script = """DATASET=voc DATA_ROOT=x WORK_DIR="" TOY_WORK_DIR=runs/toy METHOD=ae_sipe AFFINITY=irn
        source scripts/pipeline.sh
        use_toy_dataset() { :; }
        run_pipeline() { echo "$WORK_DIR"; }
        drive "$@" """
    result = subprocess.run(["bash", "-c", script, "driver", *args], cwd=REPO, capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == expected
