"""Stage 4, affinity labels (docs/method.md §8): the combination rules, the CRFs on a synthetic scene, the
stage script end to end on toy images with synthetic CAMs, its errors, and eval_cam --confident."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.sources import build_source
from tests.scripts import REPO, assert_error, labelled_share, run
from tools.confident_labels import confident_labels, psa_background, psa_labels
from tools.cam_files import save_cam
from tools.io import read_image, read_label_png
from tools.metrics import confusion_matrix, coverage, labelled_confusion
from tools.palette import voc_palette



def flip_some(labels, n_labels, seed):
    """A deterministic stand-in for a CRF: moves a fixed random third of the pixels to the next label."""
    move = np.random.default_rng(seed).random(labels.shape) < 1 / 3
    return np.where(move, (labels + 1) % n_labels, labels)


def test_confident_rule_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    keys = np.array([0, 3, 7])
    cam = rng.random((3, 20, 30)).astype(np.float32)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    calls = []

    def stub_crf(img, labels, n_labels):
        assert img is image and n_labels == 3 and labels.min() >= 0 and labels.max() < 3
        calls.append(labels.copy())
        return flip_some(labels, n_labels, seed=len(calls))

    out = confident_labels(image, keys, cam, 0.5, crf_labels_fn=stub_crf)

    fg = keys[flip_some(cam.argmax(0), 3, seed=1)]
    scaled = cam.copy()
    scaled[0] *= 0.5
    bg = keys[flip_some(scaled.argmax(0), 3, seed=2)]
    expected = np.full(fg.shape, 255)
    for i, j in np.ndindex(fg.shape):
        if fg[i, j] > 0:
            expected[i, j] = fg[i, j]
        elif bg[i, j] == 0:
            expected[i, j] = 0
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
    assert np.array_equal(calls[0], cam.argmax(0)) and np.array_equal(calls[1], scaled.argmax(0))
    # every case of the rule occurs: fg class over bg class / over bg background, both background, unsure
    assert {(a > 0, b > 0) for a, b in zip(fg.ravel(), bg.ravel())} == {(True, True), (True, False),
                                                                       (False, False), (False, True)}


def test_psa_rule_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    keys = np.array([0, 2, 4])
    cam = rng.random((3, 20, 30)).astype(np.float32)
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    seen = []

    def stub_crf(img, probs, t, scale_factor):
        assert t == 10 and scale_factor == 1
        seen.append(probs)
        return np.stack([flip_some(probs.argmax(0), 3, seed=len(seen)) == k for k in range(3)]).astype(np.float32)

    out = psa_labels(image, keys, cam, crf_probs_fn=stub_crf)
    for probs, alpha in zip(seen, (4, 32)):
        np.testing.assert_allclose(probs[0], (1 - cam[1:].max(0)) ** alpha, rtol=1e-5)
        assert np.array_equal(probs[1:], cam[1:])
    low = flip_some(seen[0].argmax(0), 3, seed=1)
    high = flip_some(seen[1].argmax(0), 3, seed=2)
    expected = np.where(high == 0, 0, np.where(low > 0, keys[low], 255))  # high-alpha background wins
    assert np.any((high == 0) & (low > 0))
    assert out.dtype == np.uint8 and np.array_equal(out, expected)


def test_psa_background_is_clipped_and_ignores_the_cam_background():
    cam = np.array([[[0.9]], [[1.02]], [[0.5]]], dtype=np.float32)
    probs = psa_background(cam, 4)
    assert probs.shape == (3, 1, 1) and probs[0, 0, 0] == 0 and np.array_equal(probs[1:], cam[1:])


def test_background_only_keys_give_background():
    cam = np.ones((1, 4, 5), dtype=np.float32)
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    for out in (confident_labels(image, [0], cam, 0.5), psa_labels(image, [0], cam)):
        assert out.dtype == np.uint8 and out.shape == (4, 5) and not out.any()


def scene(h=48, w=64):
    """Red background on the left, a blue object on the right, a green patch in the background."""
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:] = (200, 40, 40)
    image[:, w // 2:] = (40, 40, 200)
    patch = np.zeros((h, w), dtype=bool)
    patch[6:18, 6:18] = True
    image[patch] = (40, 200, 40)
    obj = np.zeros((h, w), dtype=bool)
    obj[:, w // 2:] = True
    return image, obj, patch


def scene_cam(obj, patch, fg_values, bg_values, shift=3):
    """A two-channel CAM (background, class) whose object edge is ``shift`` pixels off the image's."""
    cam_obj = np.roll(obj, -shift, axis=1)
    cam_obj[:, obj.shape[1] - shift:] = True
    fg = np.where(cam_obj, fg_values[0], np.where(patch, fg_values[1], fg_values[2]))
    bg = np.where(cam_obj, bg_values[0], np.where(patch, bg_values[1], bg_values[2]))
    return np.stack([bg, fg]).astype(np.float32)


def test_confident_labels_with_the_real_crf():
    image, obj, patch = scene()
    # object: class wins; patch: background wins at scale 1 but not at 0.5 (unsure); rest: background
    cam = scene_cam(obj, patch, fg_values=(0.9, 0.4, 0.1), bg_values=(0.1, 0.5, 0.9))
    out = confident_labels(image, [0, 3], cam, 0.5)
    assert set(np.unique(out)) == {0, 3, 255}
    assert (out[obj] == 3).mean() > 0.98  # the CRF moves the shifted edge onto the colour edge
    assert (out[patch] == 255).mean() > 0.98
    assert (out[~obj & ~patch] == 0).mean() > 0.98


def test_psa_labels_with_the_real_crf():
    image, obj, patch = scene()
    # fg 0.15 on the patch: (0.85 ** 4 = 0.52) > 0.15 (low alpha: background), 0.85 ** 32 < 0.15 (not confident)
    # (PSA's CRF keeps a confident CAM's edge where it is, so this CAM's edge is not shifted)
    cam = scene_cam(obj, patch, fg_values=(0.9, 0.15, 0.02), bg_values=(0.0, 0.0, 0.0), shift=0)
    out = psa_labels(image, np.array([0, 4]), cam)
    assert out.shape == obj.shape and out.dtype == np.uint8
    assert (out[obj] == 4).mean() > 0.98
    assert (out[patch] == 255).mean() > 0.98
    assert (out[~obj & ~patch] == 0).mean() > 0.98


def test_labelled_confusion_and_coverage_by_hand():
    gt = np.array([[0, 1, 1], [255, 2, 0]])
    pred = np.array([[0, 255, 1], [1, 255, 2]])
    confusion = labelled_confusion(pred, gt, 3)
    assert np.array_equal(confusion, confusion_matrix(np.array([0, 1, 2]), np.array([0, 1, 0]), 3))
    assert coverage(confusion, 5) == 3 / 5


# ---- the stage script -------------------------------------------------------------------------------

def synthetic_cams(root, cam_dir, seed=0):
    """CAM files of the toy train images from their ground truth: a blurred one-hot of the mask
    (void pixels count as background) plus noise, at the image size."""
    source = build_source("custom", root)
    rng = np.random.default_rng(seed)
    names = source.ids("train")
    for name in names:
        gt = read_label_png(source.mask_path(name))
        keys = np.concatenate([[0], source.labels(name)])
        onehot = np.stack([(gt == k) | ((gt == 255) & (k == 0)) for k in keys]).astype(np.float32)
        blurred = np.stack([np.asarray(Image.fromarray(c).resize((c.shape[1] // 4, c.shape[0] // 4),
                                                                 Image.BILINEAR).resize(c.shape[::-1],
                                                                                        Image.BILINEAR))
                            for c in onehot])
        cam = np.clip(0.8 * blurred + 0.25 * rng.random(blurred.shape), 0, 1)
        save_cam(cam_dir / f"{name}.npy", keys, cam)
    return source, names


@pytest.fixture(scope="module")
def toy(make_toy):
    return make_toy(num_train=6, num_val=2, size=(40, 56), seed=5)


def stage_args(root, work, *extra):
    return ["--dataset", "custom", "--data-root", root, "--work-dir", work, "--crf-workers", "2", *extra]


@pytest.mark.slow
def test_stage_end_to_end_and_eval(toy, tmp_path):
    work = tmp_path / "run"
    source, names = synthetic_cams(toy, work / "cam")
    (work / "affinity_labels").mkdir(parents=True)
    stale = work / "affinity_labels" / f".{names[0]}.abc.tmp.png"
    stale.write_bytes(b"half")
    run("make_affinity_labels.py", *stage_args(toy, work))
    assert not stale.exists()
    files = sorted((work / "affinity_labels").glob("*.png"))
    assert [f.stem for f in files] == sorted(names)
    seen = set()
    for name in names:
        with Image.open(work / "affinity_labels" / f"{name}.png") as img:
            assert img.mode == "P" and img.getpalette()[:24] == voc_palette()[:24]
        labels = read_label_png(work / "affinity_labels" / f"{name}.png")
        assert labels.shape == read_image(source.image_path(name)).shape[:2]
        allowed = {0, 255, *source.labels(name).tolist()}
        seen |= set(np.unique(labels).tolist())
        assert set(np.unique(labels).tolist()) <= allowed
    assert {0, 255} < seen
    flags = json.loads((work / "args" / "make_affinity_labels.json").read_text())
    assert flags["mode"] == "sipe" and flags["bg_conf_scale"] == 0.5 and flags["cam_dir"] == str(work / "cam")

    result = run("eval_cam.py", "--dataset", "custom", "--data-root", toy, "--work-dir", work,
                 "--label-dir", work / "affinity_labels", "--confident", "--score-workers", "0")
    entry = json.loads((work / "results.json").read_text())["affinity_labels"]
    share = labelled_share(toy, work / "affinity_labels")
    assert 0 < share < 100 and entry["coverage"] == pytest.approx(share, abs=0.005)
    assert entry["precision"] > 80
    assert entry["note"] == f"confident, coverage {entry['coverage']:.1f}%" and entry["note"] in result.stdout
    assert f"| {entry['note']} |" in (work / "results.md").read_text()
    run("eval_cam.py", "--dataset", "custom", "--data-root", toy, "--work-dir", work, "--label-dir",
        work / "affinity_labels", "--confident", "--score-workers", "0", "--tag", "noted", "--note", "final checkpoint")
    noted = json.loads((work / "results.json").read_text())["noted"]
    assert noted["note"] == f"{entry['note']}; final checkpoint" and noted["miou"] == entry["miou"]

    psa_dir = tmp_path / "psa"
    run("make_affinity_labels.py", *stage_args(toy, work, "--mode", "psa", "--out-dir", psa_dir))
    for name in names:
        labels = read_label_png(psa_dir / f"{name}.png")
        assert set(np.unique(labels).tolist()) <= {0, 255, *source.labels(name).tolist()}


def missing_cam(cam_dir, name, shape):
    (cam_dir / f"{name}.npy").unlink()


def wrong_size(cam_dir, name, shape):
    save_cam(cam_dir / f"{name}.npy", [0, 1], np.zeros((2, shape[0] - 1, shape[1])))


def keys_out_of_range(cam_dir, name, shape):
    save_cam(cam_dir / f"{name}.npy", [0, 9], np.zeros((2, *shape)))


@pytest.mark.slow
@pytest.mark.parametrize("breakage, expected", [
    (missing_cam, "CAM file not found"),
    (wrong_size, "map size .* differs from its image"),
    (keys_out_of_range, r"keys \[0, 9\] are not 0 followed by sorted class ids < 5"),
])
def test_stage_errors_are_one_line_and_exit_2(toy, tmp_path, breakage, expected):
    work = tmp_path / "run"
    source, names = synthetic_cams(toy, work / "cam")
    bad = names[len(names) // 2]
    breakage(work / "cam", bad, read_image(source.image_path(bad)).shape[:2])
    result = run("make_affinity_labels.py", *stage_args(toy, work), check=False)
    assert_error(result, work / "cam" / f"{bad}.npy", expected)
    assert not (work / "affinity_labels" / f"{bad}.png").exists()


def spawned_children(pid):
    """The pids of the multiprocessing workers that ``pid`` spawned."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if parent == pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_crf_worker_stops_the_stage_at_once_with_one_line(toy, tmp_path):
    work = tmp_path / "run"
    synthetic_cams(toy, work / "cam")
    proc = subprocess.Popen([sys.executable, str(REPO / "make_affinity_labels.py"), *map(str, stage_args(toy, work))],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (workers := spawned_children(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, "no pool worker appeared"
            time.sleep(0.005)
        os.kill(workers[0], signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.monotonic() - killed < 10
    assert proc.returncode == 2, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: a CRF process died"), stderr
    assert "Traceback" not in stderr
