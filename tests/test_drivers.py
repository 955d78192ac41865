"""The whole pipeline through the real drivers on a tiny toy set (docs/method.md §1, §2)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.scripts import REPO, drive, labelled_share
from tools.io import read_label_png

SEGMENTATION_ROWS = ["segmentation (val)", "segmentation + CRF (val)"]

pytestmark = pytest.mark.slow  # every test here runs stage scripts or drivers

def test_run_voc_toy_goes_through_every_stage_and_skips_finished_ones(tmp_path):
    work = tmp_path / "voc"
    stdout = drive("run_voc.sh", work)
    results = json.loads((work / "results.json").read_text())
    assert list(results) == ["CAM", "IS-CAM", "AE-IS-CAM", "affinity labels", "random walk", "random walk + CRF",
                             *SEGMENTATION_ROWS]
    share = labelled_share(work / "toy_data", work / "affinity_labels")
    assert share > 0 and results["affinity labels"]["coverage"] == pytest.approx(share, abs=0.005)
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

    # the stages' outputs; ladder.png, like results.md, is drawn again from them at every run
    assert (work / "ladder.png").is_file()
    outputs = sorted(p for p in work.rglob("*") if p.suffix in (".npy", ".png", ".pth") and p.name != "ladder.png")
    before = {p: p.stat().st_mtime_ns for p in outputs}
    stdout = drive("run_voc.sh", work)
    for name in ("cam", "affinity", "seg"):
        assert f"ckpt/{name}.pth: trained from these inputs and flags already; nothing to do" in stdout
    assert stdout.count(": 0 of ") == 4  # make_cam, stage 4, stage 6, infer_seg: every image done
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
    share = labelled_share(work / "toy_data", work / "affinity_labels")
    entry = results["affinity labels (pseudo-labels)"]
    assert share > 0 and entry["coverage"] == pytest.approx(share, abs=0.005)


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
    (["--method", "cam", "--affinity", "affinitynet", "--backbone", "resnet38"], "runs/voc_cam_affinitynet_resnet38"),
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


# ---- the drivers' arguments and quoting, with a `python` that records its arguments ------------------

FAKE_PYTHON = """#!{python}
import json, os, sys
if sys.argv[1:3] == ["-m", "tools.recipes"]:  # the drivers' check of their choices: run, not recorded
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
with open(os.environ["DRIVER_CALLS"], "a") as calls:
    calls.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def drive_recorded(tmp_path, script, *args):
    """Run a driver whose `python` only records its arguments; returns the result and the
    recorded calls (one list of arguments per call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(FAKE_PYTHON.format(python=sys.executable))
    (bin_dir / "python").chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DRIVER_CALLS": str(calls)}
    result = subprocess.run(["bash", str(REPO / script), *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60)
    recorded = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return result, recorded


@pytest.mark.parametrize("args, message", [
    (["--work-dir"], "--work-dir needs a value"),
    (["--toy", "--train-cam"], "--train-cam needs a value"),
    (["--method"], "--method needs a value"),
    (["--toy", "--toy-images", "0"], "--toy-images must be an integer >= 5, not '0'"),
    (["--toy", "--toy-images", "4"], "--toy-images must be an integer >= 5, not '4'"),
    (["--toy", "--toy-images", "1e3"], "--toy-images must be an integer >= 5, not '1e3'"),
    (["--toy", "--toy-image-size", "15"], "--toy-image-size must be an integer >= 16, not '15'"),
    (["--gpus", "two"], "--gpus must be an integer >= 1, not 'two'"),
    (["--method", "sipe2"], "--method must be sipe, ae_sipe or cam, not 'sipe2'"),
    (["--affinity", "psa"], "--affinity must be irn, affinitynet or none, not 'psa'"),
    (["--toy", "--affinity", "-x"], "--affinity must be irn, affinitynet or none, not '-x'"),
    (["--toy", "--backbone", "resnet38"], "--backbone: not with --toy (the toy recipe's backbone is efficientnet_lite0)"),
    (["--overwrite-from", "make_cams"], "--overwrite-from must be a stage: train-cam make-cam eval-cam "
                                        "make-affinity-labels train-affinity make-seg-labels train-seg infer-seg"),
])
def test_driver_argument_errors_are_one_line_before_anything_runs(tmp_path, args, message):
    work = tmp_path / "run"
    result, calls = drive_recorded(tmp_path, "run_voc.sh", "--work-dir", str(work), *args)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"error: {message}"], result.stderr
    assert calls == [] and not work.exists()


def test_driver_backbone_reaches_both_trainings(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    (work / "results.md").write_text("| stage | mIoU |\n\n")  # what the last line of the driver prints
    result, calls = drive_recorded(tmp_path, "run_voc.sh", "--work-dir", str(work), "--method", "cam",
                                   "--affinity", "affinitynet", "--backbone", "vgg16")
    assert result.returncode == 0, result.stderr
    trainings = {call[0]: call for call in calls if call[0] in ("train_cam.py", "train_affinity.py")}
    assert sorted(trainings) == ["train_affinity.py", "train_cam.py"]
    assert all(call[call.index("--backbone") + 1] == "vgg16" for call in trainings.values())
    others = [call for call in calls if call[0] not in trainings]
    assert others and not any("--backbone" in call for call in others)


@pytest.mark.parametrize("where", ["file", "file/run"])
def test_driver_work_dir_that_is_a_file_is_one_line(tmp_path, where):
    (tmp_path / "file").write_text("")
    result, calls = drive_recorded(tmp_path, "run_coco.sh", "--toy", "--work-dir", str(tmp_path / where))
    assert result.returncode == 2 and result.stderr.strip() == f"error: {tmp_path / 'file'}: not a directory"
    assert calls == []


def test_overwrite_from_reaches_that_stage_and_every_later_one(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    (work / "results.md").write_text("| stage | mIoU |\n\n")
    result, calls = drive_recorded(tmp_path, "run_voc.sh", "--toy", "--work-dir", str(work),
                                   "--overwrite-from", "make-affinity-labels")
    assert result.returncode == 0, result.stderr[-3000:]
    overwriting = {call[0]: "--overwrite" in call for call in calls if call[0].endswith(".py")}
    assert overwriting == {"train_cam.py": False, "make_cam.py": False, "eval_cam.py": False,
                           "make_affinity_labels.py": True, "train_affinity.py": True, "make_seg_labels.py": True,
                           "train_seg.py": True, "infer_seg.py": True, "ladder_figure.py": False}


def test_paths_with_spaces_reach_every_stage_whole(tmp_path):
    work = tmp_path / "run dir"
    work.mkdir()
    (work / "results.md").write_text("| stage | mIoU |\n\n")  # what the last line of the driver prints
    result, calls = drive_recorded(tmp_path, "run_voc.sh", "--toy", "--work-dir", str(work),
                                   "--train-seg", "--pretrained none --iterations 2")
    assert result.returncode == 0, result.stderr[-3000:]
    scripts = [call[1] if call[0] == "-m" else call[0] for call in calls]
    assert scripts == ["data.toy", "train_cam.py", "make_cam.py", *["eval_cam.py"] * 3, "make_affinity_labels.py",
                       "eval_cam.py", "train_affinity.py", "make_seg_labels.py", *["eval_cam.py"] * 2,
                       "data.sources", "train_seg.py", "infer_seg.py", *["eval_cam.py"] * 2, "ladder_figure.py"]
    assert calls[0][:4] == ["-m", "data.toy", "--out", f"{work}/toy_data"]
    for call in calls[1:]:
        # every path is one word: nothing of the temporary folder but whole paths in the run directory
        assert all(arg.startswith(str(work)) for arg in call if str(tmp_path) in arg), call
        if call[0] != "-m":
            assert call[call.index("--work-dir") + 1] == str(work)
        if call[0] != "-m" or call[1] == "data.sources":  # it asks whether the dataset lists val
            assert call[call.index("--data-root") + 1] == f"{work}/toy_data"
    # every stage takes the toy recipe of tools/recipes.py; the driver holds no recipe of its own
    stage_calls = [call for call in calls[1:] if call[0] not in ("-m", "ladder_figure.py")]
    assert all(call[call.index("--recipe") + 1] == "toy" for call in stage_calls)
    assert not [arg for call in stage_calls for arg in call
                if arg in ("--epochs", "--crop-size", "--batch-size", "--backbone", "--lr", "--scales")]
    flags = dict(zip(scripts, calls))
    seg = flags["train_seg.py"]
    assert seg[seg.index("--pretrained") + 1] == "none"  # the driver's flags reach the stage
    assert seg[seg.index("--label-dir") + 1] == f"{work}/pseudo_labels"


def test_a_data_root_with_spaces_reaches_every_stage_whole(tmp_path):
    data, work = tmp_path / "my data", tmp_path / "run dir"
    work.mkdir()
    (work / "results.md").write_text("\n")
    result, calls = drive_recorded(tmp_path, "run_voc.sh", "--dataset", "custom", "--data-root", str(data),
                                   "--work-dir", str(work), "--train-cam", "--epochs 1  --lr 0.1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(calls) == 17 and all(call[call.index("--data-root") + 1] == str(data) for call in calls)
    assert calls[0][0] == "train_cam.py" and calls[0][-4:] == ["--epochs", "1", "--lr", "0.1"]


def test_fully_supervised_trains_the_same_network_on_the_ground_truth_and_reads_stage_7_against_it(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    (work / "results.md").write_text("\n")
    result, calls = drive_recorded(tmp_path, "run_voc.sh", "--toy", "--work-dir", str(work), "--fully-supervised",
                                   "--train-seg", "--iterations 3")
    assert result.returncode == 0, result.stderr[-3000:]
    seg_calls = [call for call in calls if call[0] in ("train_seg.py", "infer_seg.py")]
    reference = f"{work}/fully_supervised"
    assert [(call[0], call[call.index("--work-dir") + 1]) for call in seg_calls] == [
        ("train_seg.py", reference), ("infer_seg.py", reference), ("train_seg.py", str(work)),
        ("infer_seg.py", str(work))]
    truth, pseudo = seg_calls[0], seg_calls[2]
    # the same recipe and budget: the two differ only in their labels and run directory
    assert "--ground-truth" in truth and "--label-dir" not in truth
    assert [a for a in truth if a not in ("--ground-truth", reference)] == \
        [a for a in pseudo if a not in ("--label-dir", f"{work}/pseudo_labels", str(work))]
    rows = [(call[call.index("--tag") + 1], call[call.index("--share-of") + 1] if "--share-of" in call else None)
            for call in calls if call[0] == "eval_cam.py" and "val" in call[call.index("--tag") + 1]]
    assert rows == [("fully supervised (val)", None), ("fully supervised + CRF (val)", None),
                    ("segmentation (val)", "fully supervised (val)"),
                    ("segmentation + CRF (val)", "fully supervised + CRF (val)")]
    scored = [call for call in calls if call[0] == "eval_cam.py" and "--share-of" in call]
    assert all(call[call.index("--work-dir") + 1] == str(work) for call in scored)
