"""Faults, through the real stage scripts on the shared reference run (tests/reference.py):
every stage killed part-way resumes to the reference's result, and run again over its
finished outputs rewrites none of them; bad input is one line ``error: <file>: <problem>``
and exit status 2 (or a conversion, for odd image modes); training stops on a NaN loss or
non-finite weights with the last good checkpoint kept and never overwrites a finished run
unasked; a full disk leaves no temporary file and says which file it could not write."""
import errno
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.sources import build_source
from engine.checkpoint import load_checkpoint
from tests.reference import STAGES, STEPS, run_stage
from tests.scripts import REPO, assert_error, run
from tools.cam_files import load_cam, save_cam
from tools.io import PipelineError, atomic_path, read_image, read_label_png, write_label_png
from tools.provenance import RECORD_NAME
from tools.report import summarize, update_results

# every test here runs stage scripts, most of them on the shared reference run (tests/reference.py),
# which the xdist group makes once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reference")]


def temporaries(folder):
    return sorted(Path(folder).glob(".*.tmp*"))


def finished(folder):
    """{name: bytes} of the output files in ``folder``: not temporaries, not its provenance record."""
    folder = Path(folder)
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*"))
            if not p.name.startswith(".") and p.name != RECORD_NAME} if folder.is_dir() else {}


def stamps(folder):
    """{name: modification time} of the files in ``folder`` but its provenance record (rewritten
    as it was by every run)."""
    return {p.name: p.stat().st_mtime_ns for p in Path(folder).iterdir() if p.name != RECORD_NAME}


def assert_readable(folder):
    """Every file of an output folder, temporaries aside, loads."""
    for name in finished(folder):
        path = Path(folder) / name
        {".npy": load_cam, ".png": read_label_png, ".pth": load_checkpoint}[path.suffix](path)


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_same_weights(a, b):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---- the reference run and a broken copy of its data ---------------------------------------------

@pytest.fixture(scope="module")
def ref(reference):
    """A run directory with every stage run once, unbroken."""
    return reference[1]


@pytest.fixture
def source(toy):
    return build_source("custom", toy)


def train_ids(root):
    return build_source("custom", root).ids("train")


def bad_id(root):
    """The image whose files the breakages below break."""
    return train_ids(root)[2]


def broken_copy(toy, tmp_path, breakage):
    """A copy of the toy set broken by ``breakage(root)``; returns (root, what breakage returned)."""
    root = tmp_path / "data"
    shutil.copytree(toy, root)
    return root, breakage(root)


# ---- 1. kill and resume ----------------------------------------------------------------------------

def kill_when(proc, ready, timeout=120):
    """SIGKILL the process group of ``proc`` (its pool workers too) as soon as ``ready()``."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the stage ended before it could be killed"
        assert time.monotonic() < deadline, "the stage wrote nothing in time"
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("name", list(STAGES))
def test_a_killed_stage_resumes_to_the_unbroken_result(toy, ref, tmp_path, source, name):
    stage = STAGES[name]
    work = tmp_path / "run"
    out = work / stage.folder
    if stage.checkpoint:
        last, final = out / f"{stage.checkpoint}_last.pth", out / f"{stage.checkpoint}.pth"
        ready = last.exists
    else:
        ready = lambda: bool(finished(out))  # noqa: E731
    args = [*stage.args(toy, ref, work), *(["--save-every", "1"] if stage.checkpoint else [])]
    proc = subprocess.Popen([sys.executable, str(REPO / stage.script), *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    kill_when(proc, ready)
    assert proc.returncode == -signal.SIGKILL
    assert_readable(out)  # never a truncated file under the final name
    if stage.checkpoint:
        assert not final.exists() and load_checkpoint(last)["step"] < STEPS
    else:
        assert 0 < len(finished(out)) < len(source.ids(stage.split)), "not killed part-way"
    first = Path(next(iter(finished(out))))
    (out / f".{first.stem}.0123abcd.tmp{first.suffix}").write_bytes(b"half a file")

    run(stage.script, *args, *(["--resume"] if stage.checkpoint else []))
    assert not temporaries(out)
    if stage.checkpoint:
        assert_same_weights(final, ref / stage.folder / final.name)
    else:
        resumed, unbroken = finished(out), finished(ref / stage.folder)
        assert resumed.keys() == unbroken.keys()
        for file_name in resumed:
            assert resumed[file_name] == unbroken[file_name], file_name


@pytest.mark.parametrize("name, signum", [("train_cam", signal.SIGTERM), ("make_cam", signal.SIGUSR1),
                                          ("make_affinity_labels", signal.SIGTERM)])
def test_a_stop_signal_is_one_line_and_the_rerun_resumes_to_the_unbroken_result(toy, ref, tmp_path, source, name,
                                                                                signum):
    """SIGTERM (a time limit, preemption) or SIGUSR1 (SLURM before a requeue), to the whole
    process group as a scheduler sends it: a training stage saves the step it is at, every
    stage ends with one line and 128 + the signal's number, leaving only whole files."""
    stage = STAGES[name]
    work = tmp_path / "run"
    out = work / stage.folder
    ready = (out / f"{stage.checkpoint}_last.pth").exists if stage.checkpoint else lambda: bool(finished(out))
    args = [*stage.args(toy, ref, work), *(["--save-every", "1"] if stage.checkpoint else [])]
    proc = subprocess.Popen([sys.executable, str(REPO / stage.script), *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, "the stage ended before it could be stopped"
        time.sleep(0.002)
    os.killpg(proc.pid, signum)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signum, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"stopped by {signal.Signals(signum).name}; every output written is whole; to resume, "
                           "run the same command")
    assert "Traceback" not in stderr and not temporaries(out)
    assert_readable(out)
    if stage.checkpoint:
        step = load_checkpoint(out / f"{stage.checkpoint}_last.pth")["step"]
        assert f"with --resume: it goes on from step {step} " in line and 1 <= step <= STEPS
        assert not (out / f"{stage.checkpoint}.pth").exists()
        run(stage.script, *args, "--resume")
        assert_same_weights(out / f"{stage.checkpoint}.pth", ref / stage.folder / f"{stage.checkpoint}.pth")
    else:
        assert 0 < len(finished(out)) < len(source.ids(stage.split)), "not stopped part-way"
        run(stage.script, *args)
        assert finished(out) == finished(ref / stage.folder)


@pytest.mark.parametrize("name", list(STAGES))
def test_a_finished_stage_run_again_rewrites_nothing(toy, ref, tmp_path, name):
    """Outputs made from the same inputs and flags (docs/method.md §2) are done: a second run keeps them
    as they are, and a training stage says so."""
    stage = STAGES[name]
    out = tmp_path / "run" / stage.folder
    shutil.copytree(ref / stage.folder, out)
    before = stamps(out)
    result = run_stage(name, toy, ref, tmp_path / "run")
    assert stamps(out) == before
    assert not (out / RECORD_NAME).exists() or (out / RECORD_NAME).read_bytes() == (
        ref / stage.folder / RECORD_NAME).read_bytes()
    if stage.checkpoint:
        assert (f"{out}/{stage.checkpoint}.pth: trained from these inputs and flags already; nothing to do"
                in result.stdout + result.stderr)
    else:
        assert f"{out}: 0 of {len(finished(out))} images to do" in result.stdout + result.stderr


# ---- data changed under finished outputs -----------------------------------------------------------

def swapped_classes(root):
    """Two classes of the class list trade places (their names, not the images')."""
    names = (root / "class_names.txt").read_text().split()
    (root / "class_names.txt").write_text("\n".join([names[0], names[2], names[1], *names[3:]]) + "\n")


def relabelled(root):
    """One image's labels changed by a labels.csv (it wins over the XML)."""
    source = build_source("custom", root)
    name = bad_id(root)
    other = next(k for k in range(1, source.num_classes) if k not in source.labels(name))
    (root / "labels.csv").write_text(f"image,labels\n{name},{source.class_names[other]}\n")


def replaced_image(root):
    """An image replaced by another picture of the same size."""
    names = train_ids(root)
    shutil.copy(root / "JPEGImages" / f"{names[0]}.jpg", root / "JPEGImages" / f"{bad_id(root)}.jpg")


def touched_image(root):
    """An image written again with the same content: a new modification time, nothing changed."""
    path = root / "JPEGImages" / f"{bad_id(root)}.jpg"
    path.write_bytes(path.read_bytes())


@pytest.mark.parametrize("breakage, changed", [(swapped_classes, "inputs.class_names, inputs.labels"),
                                                (relabelled, "inputs.labels"), (replaced_image, "inputs.images"),
                                                (touched_image, None)])
def test_outputs_of_other_data_are_never_kept_as_done(toy, ref, tmp_path, breakage, changed):
    """The data a stage read is part of its outputs' record: a change of the class list, of an
    image's labels or of an image's content is named, as a change of flags is, by the stage
    (its outputs would be done), by the next stage (it reads them) and by a checkpoint's user
    (its channels would take other names); a file written again unchanged is no change."""
    root, _ = broken_copy(toy, tmp_path, breakage)
    work = tmp_path / "run"
    for folder in ("cam", "ckpt"):
        shutil.copytree(ref / folder, work / folder)
    make_cam = run_stage("make_cam", root, ref, work, check=False)
    train_cam = run_stage("train_cam", root, ref, work, check=False)
    labels = run_stage("make_affinity_labels", root, ref, work, "--cam-dir", work / "cam", check=False)
    if changed is None:
        assert "0 of 8 images to do" in make_cam.stderr and "nothing to do" in train_cam.stderr
        assert labels.returncode == 0
        return
    if breakage is swapped_classes:  # the network's channels are named by the class list
        assert_error(make_cam, ref / "ckpt" / "cam.pth", r"trained with another class list than the dataset's now")
    else:
        assert_error(make_cam, work / "cam", rf"another network, other data or other flags \(differs in {changed}\)")
    assert_error(train_cam, work / "ckpt" / "cam.pth", rf"other inputs or flags \(differs in {changed}\)")
    assert_error(labels, work / "cam", rf"made from other data than {root} holds now \(differs in {changed} of "
                                       r"train\); make it again")
    assert finished(work / "cam") == finished(ref / "cam")  # untouched
    if breakage is not swapped_classes:  # made again from the data there is now
        run_stage("make_cam", root, ref, work, "--overwrite")
        remade = {path.name: load_cam(path) for path in sorted((work / "cam").glob("*.npy"))}
        kept = {path.name: load_cam(path) for path in sorted((ref / "cam").glob("*.npy"))}
        assert remade.keys() == kept.keys()
        assert [name for name in remade if not all(np.array_equal(a, b) for a, b in zip(remade[name], kept[name]))] \
            == [f"{bad_id(root)}.npy"]


# ---- 2. bad input ----------------------------------------------------------------------------------

def truncated_jpeg(root):
    path = root / "JPEGImages" / f"{bad_id(root)}.jpg"
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    return path, "cannot read image .*truncated"


def unknown_id(root):
    path = root / "ImageSets" / "Segmentation" / "train.txt"
    path.write_text(path.read_text() + "toy_9999\n")
    return path, "id 'toy_9999' has no image"


def no_foreground(root):
    name = bad_id(root)
    (root / "Annotations" / f"{name}.xml").write_text("<annotation></annotation>")
    write_label_png(root / "SegmentationClass" / f"{name}.png", np.zeros((48, 64), np.uint8))
    return root / "JPEGImages" / f"{name}.jpg", f"no foreground class label for image '{name}'"


@pytest.mark.parametrize("breakage", [truncated_jpeg, unknown_id, no_foreground])
def test_make_cam_bad_input(toy, ref, tmp_path, breakage):
    root, (named, problem) = broken_copy(toy, tmp_path, breakage)
    work = tmp_path / "run"
    result = run_stage("make_cam", root, ref, work, check=False)
    assert_error(result, named, problem)
    done = finished(work / "cam")
    assert f"{bad_id(toy)}.npy" not in done and not temporaries(work / "cam")
    if breakage is truncated_jpeg:  # found when it is read: the images before it are done, and whole
        assert_readable(work / "cam")
    else:  # found before any image
        assert not done


def rgb_pattern(h=12, w=16):
    y, x = np.mgrid[:h, :w]
    return np.stack([y * 20, x * 15, (x + y) * 9], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("mode, suffix", [("L", ".jpg"), ("CMYK", ".jpg"), ("L", ".png"), ("LA", ".png"),
                                          ("RGBA", ".png"), ("P", ".png"), ("P+transparency", ".png"),
                                          ("I;16", ".png"), ("1", ".png"), ("CMYK", ".tif")])
def test_read_image_converts_every_mode_to_uint8_rgb(tmp_path, mode, suffix):
    rgb = rgb_pattern()
    save_args = {}
    if mode == "I;16":  # 16-bit grayscale, 255 * 257 = 65535 at full scale
        gray = np.asarray(Image.fromarray(rgb).convert("L"))
        img, expected = Image.fromarray(gray.astype(np.uint16) * 257), np.repeat(gray[..., None], 3, axis=-1)
    elif mode == "P+transparency":  # palette index 0 transparent: black, as is transparent RGBA
        img = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
        save_args = {"transparency": 0}
        index = np.asarray(img)[..., None]
        assert np.any(index == 0) and img.getpalette()[:3] != [0, 0, 0]
        expected = np.where(index == 0, 0, np.asarray(img.convert("RGB")))
    else:
        img = Image.fromarray(rgb).convert(mode)
        expected = np.asarray(img.convert("RGB"))
    path = tmp_path / f"image{suffix}"
    img.save(path, **save_args)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    if suffix == ".jpg":  # lossy
        assert np.abs(out.astype(int) - expected).mean() < 2
    else:
        assert np.array_equal(out, expected)


def odd_modes_and_list(root):
    """Two images rewritten as grayscale and CMYK JPEGs; a list with blank lines, spaces and duplicates."""
    ids = train_ids(root)
    for name, mode in zip(ids[:2], ("L", "CMYK")):
        path = root / "JPEGImages" / f"{name}.jpg"
        Image.fromarray(read_image(path)).convert(mode).save(path, quality=95)
    lists = root / "ImageSets" / "Segmentation" / "train.txt"
    lists.write_text("\n" + "\n\n".join(f"  {i} " for i in ids) + "\n\n" + f"{ids[0]}\n{ids[3]}\n")
    return ids


def test_make_cam_converts_odd_image_modes_and_reads_a_messy_list(toy, ref, tmp_path):
    root, ids = broken_copy(toy, tmp_path, odd_modes_and_list)
    with Image.open(root / "JPEGImages" / f"{ids[1]}.jpg") as img:
        assert img.mode == "CMYK"
    work = tmp_path / "run"
    run_stage("make_cam", root, ref, work)
    assert sorted(finished(work / "cam")) == sorted(f"{i}.npy" for i in ids)
    for name in ids:
        keys, cam = load_cam(work / "cam" / f"{name}.npy")
        assert cam.shape[1:] == read_image(root / "JPEGImages" / f"{name}.jpg").shape[:2]
        assert np.array_equal(keys, load_cam(ref / "cam" / f"{name}.npy")[0])


def truncated_mask(root):
    path = root / "SegmentationClass" / f"{bad_id(root)}.png"
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    return path, "cannot read label PNG"


def mask_of_another_size(root):
    path = root / "SegmentationClass" / f"{bad_id(root)}.png"
    write_label_png(path, read_label_png(path)[:-3])
    return path, r"mask size \(\d+, \d+\) differs from its image"


def mask_out_of_range(root):
    path = root / "SegmentationClass" / f"{bad_id(root)}.png"
    labels = read_label_png(path)
    labels[:4, :4] = 7
    write_label_png(path, labels)
    return path, r"values \[7\] are neither class ids 0\.\.4 nor 255"


def missing_mask(root):
    (root / "SegmentationClass" / f"{bad_id(root)}.png").unlink()


def test_eval_cam_scores_the_images_of_a_custom_dataset_that_have_masks(toy, ref, tmp_path):
    """Own data may have masks for some images only (VOC and COCO may not: an error there)."""
    root, _ = broken_copy(toy, tmp_path, missing_mask)
    work = tmp_path / "run"
    run("eval_cam.py", "--dataset", "custom", "--data-root", root, "--split", "train", "--work-dir", work,
        "--cam-dir", ref / "cam", "--score-workers", "0")
    row = json.loads((work / "results.json").read_text())["cam"]
    listed = len(train_ids(root))
    assert row["images"] == listed - 1 and f"{listed - 1} of {listed} images have masks" in row["note"]


@pytest.mark.parametrize("breakage", [truncated_mask, mask_of_another_size, mask_out_of_range])
def test_eval_cam_bad_ground_truth(toy, ref, tmp_path, breakage):
    root, (named, problem) = broken_copy(toy, tmp_path, breakage)
    work = tmp_path / "run"
    result = run("eval_cam.py", "--dataset", "custom", "--data-root", root, "--split", "train", "--work-dir", work,
                 "--cam-dir", ref / "cam", "--score-workers", "0", check=False)
    assert_error(result, named, problem)
    assert not (work / "results.json").exists() and not temporaries(work)


def truncated_label(label_dir):
    path = sorted(label_dir.glob("*.png"))[3]
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    return path, "cannot read label PNG"


def label_out_of_range(label_dir):
    path = sorted(label_dir.glob("*.png"))[3]
    labels = read_label_png(path)
    labels[0, 0] = 9
    write_label_png(path, labels)
    return path, r"values \[9\] are neither class ids"


# with a data-loading worker too: torch re-raises the error wrapped in the worker's traceback
@pytest.mark.parametrize("breakage, workers", [(truncated_label, 0), (label_out_of_range, 0), (truncated_label, 1)])
def test_train_affinity_bad_label(toy, ref, tmp_path, breakage, workers):
    labels = tmp_path / "labels"
    shutil.copytree(ref / "affinity_labels", labels)
    named, problem = breakage(labels)
    work = tmp_path / "run"
    result = run_stage("train_affinity", toy, ref, work, "--label-dir", labels, "--num-workers", str(workers),
                       check=False)
    assert_error(result, named, problem)
    assert not finished(work / "ckpt") and not temporaries(work / "ckpt")


def test_foreign_cam_files_are_recognised(tmp_path):
    h, w = 12, 16
    foreign = {
        # PSA's dict class -> map is read (tests/test_published_cams.py); one of 1-D values is nothing known
        "psa": ({1: np.zeros(w)}, "not a CAM file of this pipeline, SIPE, AE-SIPE, IRN or PSA"),
        "array": (np.zeros((2, h, w)), "not a CAM file"),
        # IRN: class indices without background as keys, maps without a background channel
        "irn": ({"keys": np.array([2, 6]), "cam": np.zeros((2, h, w))},
                r"keys \[2, 6\] are not 0 followed by sorted class ids < 5"),
    }
    for name, (record, problem) in foreign.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, record, allow_pickle=True)
        with pytest.raises(PipelineError, match=rf"^{re.escape(str(path))}: .*{problem}"):
            load_cam(path, num_classes=5, size=(h, w))
    path = tmp_path / "voc.npy"  # valid keys and size, made for a dataset of 21 classes
    save_cam(path, [0, 3], np.zeros((2, h, w)), method="sipe", num_classes=21)
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(path))}: CAM made for a dataset of 21 classes"):
        load_cam(path, num_classes=5)
    assert load_cam(path)[0].tolist() == [0, 3]  # readable when no dataset is given
    with pytest.raises(PipelineError, match=r"no map 'method' \(has \['cam'\]"):
        load_cam(path, "method")
    record = np.load(tmp_path / "voc.npy", allow_pickle=True).item()
    assert record["method"] == "sipe" and record["keys"].dtype == np.int64 and record["format"] == 2


def test_a_cam_with_nan_or_infinite_values_is_an_error(tmp_path):
    cam = np.zeros((2, 4, 5))
    for name, value in (("nan", np.nan), ("inf", np.inf), ("minus_inf", -np.inf)):
        bad = cam.copy()
        bad[1, 2, 3] = value
        path = tmp_path / f"{name}.npy"
        with pytest.raises(PipelineError, match=rf"^{re.escape(str(path))}: maps \['cam'\] are not finite"):
            save_cam(path, [0, 1], bad)
        with pytest.raises(PipelineError, match=r"maps \['is_cam'\] are not finite"):
            save_cam(path, [0, 1], cam, is_cam=bad)
        assert not path.exists() and not temporaries(tmp_path)
    for value in (np.nan, -np.inf):  # a file written by other code
        cam[1, 2, 3] = value
        path = tmp_path / "foreign.npy"
        np.save(path, {"keys": np.array([0, 1]), "cam": cam}, allow_pickle=True)
        with pytest.raises(PipelineError, match=rf"^{re.escape(str(path))}: map 'cam' is not finite"):
            load_cam(path)


@pytest.mark.parametrize("script", ["eval_cam.py", "make_affinity_labels.py", "make_seg_labels.py"])
def test_cam_of_another_dataset_is_an_error(toy, ref, tmp_path, script):
    cam_dir = tmp_path / "cam"
    shutil.copytree(ref / "cam", cam_dir)
    record = np.load(ref / "cam" / "toy_0000.npy", allow_pickle=True).item()
    assert record["num_classes"] == 5 and record["method"] == "sipe"
    bad = cam_dir / f"{bad_id(toy)}.npy"
    keys, cam = load_cam(bad)
    save_cam(bad, keys, cam, method="sipe", num_classes=21)
    work = tmp_path / "run"
    flags = {"eval_cam.py": ["--score-workers", "0"], "make_affinity_labels.py": ["--crf-workers", "0"],
             "make_seg_labels.py": ["--checkpoint", ref / "ckpt" / "affinity.pth", "--device", "cpu"]}[script]
    result = run(script, "--dataset", "custom", "--data-root", toy, "--split", "train", "--work-dir", work,
                 "--cam-dir", cam_dir, *flags, check=False)
    assert_error(result, bad, "CAM made for a dataset of 21 classes, this dataset has 5")
    for folder in ("affinity_labels", "pseudo_labels"):
        assert f"{bad.stem}.png" not in finished(work / folder) and not temporaries(work / folder)


def checkpoint_of_21_classes(ref, tmp_path):
    state = torch.load(ref / "ckpt" / "cam.pth", weights_only=False)
    state["num_classes"] = 21
    state["model"]["classifier.weight"] = torch.zeros(20, 2048, 1, 1)
    path = tmp_path / "voc_cam.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("script, checkpoint, problem", [
    ("make_cam.py", "ckpt/affinity.pth", "checkpoint has kind='affinity', this run needs 'cam'"),
    ("make_seg_labels.py", "ckpt/cam.pth", "checkpoint has kind='cam', this run needs 'affinity'"),
    ("make_cam.py", checkpoint_of_21_classes, "checkpoint has num_classes=21, this run needs 5"),
])
def test_checkpoint_of_another_kind_or_dataset_is_an_error(toy, ref, tmp_path, script, checkpoint, problem):
    path = checkpoint(ref, tmp_path) if callable(checkpoint) else ref / checkpoint
    work = tmp_path / "run"
    cams = ["--cam-dir", ref / "cam"] if script == "make_seg_labels.py" else []
    result = run(script, "--dataset", "custom", "--data-root", toy, "--split", "train", "--work-dir", work,
                 "--checkpoint", path, *cams, "--device", "cpu", "--num-workers", "0", check=False)
    assert_error(result, path, re.escape(problem))
    assert not finished(work / "cam") and not finished(work / "pseudo_labels")


def test_image_smaller_than_the_crop_is_padded(toy, ref, tmp_path):
    work = tmp_path / "run"
    run_stage("train_cam", toy, ref, work, "--crop-size", "96")  # images at most 64 px
    assert weights(work / "ckpt" / "cam.pth")["classifier.weight"].isfinite().all()


# ---- 3. training health ----------------------------------------------------------------------------

def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(toy, ref, tmp_path):
    work = tmp_path / "run"
    result = run_stage("train_cam", toy, ref, work, "--lr", "1e30", "--save-every", "1", check=False)
    last = work / "ckpt" / "cam_last.pth"
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    match = re.fullmatch(rf"error: the loss became (nan|inf) at step (\d); the last good checkpoint "
                         rf"{re.escape(str(last))} is kept \(lower --lr, or check the data\)", line)
    assert match, line
    state = load_checkpoint(last)
    assert state["step"] == int(match.group(2)) - 1
    assert all(value.isfinite().all() for value in state["model"].values() if value.is_floating_point())
    assert not (work / "ckpt" / "cam.pth").exists() and not temporaries(work / "ckpt")


def test_non_finite_weights_are_never_saved(toy, ref, tmp_path):
    # the loss of step 1 is finite, the update of step 1 is not (ResNet-50's gradients are large
    # enough; ResNet-18's step stays finite): nothing to keep
    work = tmp_path / "run"
    result = run_stage("train_cam", toy, ref, work, "--lr", "3e38", "--new-layer-lr-mult", "1", "--clip-grad", "0",
                       "--save-every", "1", "--backbone", "resnet50", check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the weights became non-finite at step 1; no checkpoint was saved (lower --lr, or check the data)")
    assert not finished(work / "ckpt") and not temporaries(work / "ckpt")


def test_finished_training_is_overwritten_only_when_asked(toy, ref, tmp_path):
    work = tmp_path / "run"
    (work / "ckpt").mkdir(parents=True)
    trainers = {name: stage.checkpoint for name, stage in STAGES.items() if stage.checkpoint}
    assert len(trainers) == 3
    for network in trainers.values():
        (work / "ckpt" / f"{network}.pth").write_bytes(b"finished")
    for name, network in trainers.items():
        result = run_stage(name, toy, ref, work, check=False)
        assert_error(result, work / "ckpt" / f"{network}.pth",
                     f"already holds a finished {network} network.*--overwrite")
        assert (work / "ckpt" / f"{network}.pth").read_bytes() == b"finished"

    # retrained; the old network is gone as soon as an overwriting run starts
    run_stage("train_affinity", toy, ref, work, "--overwrite", "--stop-at-step", "2")
    assert not (work / "ckpt" / "affinity.pth").exists()
    run_stage("train_affinity", toy, ref, work, "--resume")
    assert_same_weights(work / "ckpt" / "affinity.pth", ref / "ckpt" / "affinity.pth")
    run_stage("train_cam", toy, ref, work, "--overwrite")
    assert_same_weights(work / "ckpt" / "cam.pth", ref / "ckpt" / "cam.pth")


# ---- 4. a full disk --------------------------------------------------------------------------------

FOUR_SCALES = ["--scales", "1.0", "0.5", "1.5", "2.0"]


def file_size_limit(limit):
    """preexec_fn: writes beyond ``limit`` bytes fail with EFBIG, as on a full disk with ENOSPC."""
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return apply


@pytest.mark.parametrize("name, limit, written, extra", [
    ("train_cam", 2 ** 20, "ckpt/cam_last.pth", []),  # torch.save
    # np.save, in this process and in a pool worker; at four scales a CAM file holds more than 700
    # bytes, and its flags, log and made_by.json fewer
    ("make_cam", 700, "cam/toy_0000.npy", FOUR_SCALES),
    ("make_cam", 700, "cam/toy_0000.npy", [*FOUR_SCALES, "--write-workers", "1"]),
    ("make_affinity_labels", 700, "affinity_labels/toy_0000.png", []),  # PIL, in a pool worker
])
def test_full_disk_is_a_clear_error_and_leaves_no_temporary(toy, ref, tmp_path, name, limit, written, extra):
    work = tmp_path / "run"
    result = run_stage(name, toy, ref, work, *extra, check=False, preexec_fn=file_size_limit(limit))
    assert_error(result, work / written, re.escape(f"cannot write ({os.strerror(errno.EFBIG)})"))
    folder = (work / written).parent
    assert not temporaries(folder)
    if "--write-workers" not in extra:
        assert not finished(folder)
    for name in finished(folder):  # a pool may finish a later image first: only whole files
        load_cam(folder / name)


def test_full_disk_while_logging(toy, ref, tmp_path):
    work = tmp_path / "run"
    log = work / "logs" / "make_affinity_labels.log"
    log.parent.mkdir(parents=True)
    log.write_text("x" * 4096)
    result = run_stage("make_affinity_labels", toy, ref, work, check=False, preexec_fn=file_size_limit(4096))
    assert_error(result, log, re.escape(f"cannot write ({os.strerror(errno.EFBIG)})"))
    assert not finished(work / "affinity_labels")


def test_atomic_writes_clean_up_and_keep_the_usual_file_mode(tmp_path, monkeypatch):
    entry = summarize(np.eye(2, dtype=np.int64), ["background", "thing"])
    update_results(tmp_path, "CAM", entry)
    path = tmp_path / "results.json"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", disk_full)  # the JSON and markdown writers
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(path))}: cannot write \(No space left on device\)$"):
        update_results(tmp_path, "IS-CAM", entry)
    assert not temporaries(tmp_path) and path.read_bytes() == before
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_bytes(b"part")
        raise KeyboardInterrupt
    assert not temporaries(path.parent)
