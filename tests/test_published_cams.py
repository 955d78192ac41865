"""CAM files of the published code bases (docs/published-cam-files.md): SIPE's and AE-SIPE's,
IRN's and PSA's, recognised by their content, read in this pipeline's convention, their
classes checked against the image's labels, and scored by eval_cam as the same maps in
this pipeline's format."""
import json

import numpy as np
import pytest
import torch

from data.sources import build_source
from tests.scripts import run
from tools.cam_files import load_cam, published_format, save_cam
from tools.io import PipelineError, read_label_png


def on_grid(values):
    """Values that this pipeline's encoding (square-root steps of 1/255) stores exactly."""
    steps = np.rint(np.sqrt(np.clip(values, 0, 1)) * 255).astype(np.float32)
    return np.square(steps / np.float32(255.0))


def write_formats(source, names, root, seed=0):
    """The same maps of each image in this pipeline's format and in SIPE's, IRN's and PSA's."""
    rng = np.random.default_rng(seed)
    folders = {kind: root / kind for kind in ("own", "sipe", "irn", "psa")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for name in names:
        gt = read_label_png(source.mask_path(name))
        classes = source.labels(name)
        foreground = on_grid(np.stack([0.5 * (gt == c) + 0.6 * rng.random(gt.shape) for c in classes]))
        cam = np.concatenate([on_grid(1 - foreground.max(axis=0, keepdims=True)), foreground])
        keys = np.concatenate([[0], classes])
        save_cam(folders["own"] / f"{name}.npy", keys, cam, method="cam", num_classes=source.num_classes)
        np.save(folders["sipe"] / f"{name}.npy", {"keys": keys, "IS_CAM": cam})
        np.save(folders["irn"] / f"{name}.npy", {"keys": torch.from_numpy(classes - 1),
                                                 "cam": torch.from_numpy(foreground[:, ::4, ::4].copy()),
                                                 "high_res": foreground})
        np.save(folders["psa"] / f"{name}.npy", {int(c) - 1: foreground[i] for i, c in enumerate(classes)})
    return folders


@pytest.fixture
def toy(make_toy):
    return make_toy(num_train=6, num_val=2, size=(40, 56), seed=5)


def test_each_format_is_recognised_and_read_in_this_pipelines_convention(toy, tmp_path):
    source = build_source("custom", toy)
    names = source.ids("train")[:2]
    folders = write_formats(source, names, tmp_path)
    for name in names:
        size, classes = read_label_png(source.mask_path(name)).shape, source.labels(name)
        keys, own = load_cam(folders["own"] / f"{name}.npy", "cam", source.num_classes, size)
        for kind in ("sipe", "irn", "psa"):
            path = folders[kind] / f"{name}.npy"
            assert published_format(np.load(path, allow_pickle=True).item()) == kind
            got_keys, got = load_cam(path, "cam", source.num_classes, size, classes=classes)
            assert np.array_equal(got_keys, keys)
            assert np.array_equal(got[1:], own[1:])  # the same foreground maps, exactly
            # SIPE's file holds its background; IRN and PSA have none: 1 - max, as the plain CAM's
            expected = own[0] if kind == "sipe" else 1 - own[1:].max(axis=0)
            assert np.allclose(got[0], expected, atol=0 if kind == "sipe" else 1e-6)


@pytest.mark.slow
def test_eval_cam_scores_each_format_as_the_same_maps_in_this_pipelines_format(toy, tmp_path):
    source = build_source("custom", toy)
    folders = write_formats(source, source.ids("train"), tmp_path / "cams")
    work = tmp_path / "run"
    for kind, folder in folders.items():
        for tag, flags in ((f"{kind} t0.3", ["--threshold", "0.3"]), (f"{kind} scaled", [])):
            run("eval_cam.py", "--dataset", "custom", "--data-root", toy, "--work-dir", work, "--cam-dir", folder,
                "--score-workers", "0", "--tag", tag, *flags)
    results = json.loads((work / "results.json").read_text())
    scores = {tag: entry["miou"] for tag, entry in results.items()}
    assert 10 < scores["own t0.3"] < scores["own scaled"] < 100
    assert scores["sipe t0.3"] == scores["irn t0.3"] == scores["psa t0.3"] == scores["own t0.3"]
    assert scores["sipe scaled"] == scores["own scaled"]
    # IRN's and PSA's background is 1 - max, computed on reading: the own file stores it on the grid
    assert scores["irn scaled"] == scores["psa scaled"] == pytest.approx(scores["own scaled"], abs=0.5)


def test_class_conventions_are_checked_against_the_image(toy, tmp_path):
    source = build_source("custom", toy)
    name = source.ids("train")[0]
    size, classes = read_label_png(source.mask_path(name)).shape, source.labels(name)
    maps = np.full((len(classes),) + size, 0.5, np.float32)
    one_based = tmp_path / "irn_one_based.npy"  # IRN's keys written 1-based by mistake
    np.save(one_based, {"keys": classes, "cam": maps, "high_res": maps})
    with pytest.raises(PipelineError, match=r"irn_one_based.npy: its classes .* \(read as IRN's 0-based classes\) are "
                                            r"not the image's labels"):
        load_cam(one_based, "cam", source.num_classes, size, classes=classes)
    no_background = tmp_path / "sipe.npy"  # SIPE's maps without their background channel
    np.save(no_background, {"keys": classes, "IS_CAM": maps})
    with pytest.raises(PipelineError, match="sipe.npy: keys .* lack SIPE's background 0"):
        load_cam(no_background, "cam", source.num_classes, size, classes=classes)
    psa = tmp_path / "psa.npy"
    np.save(psa, {int(c) - 1: maps[0] for c in classes})
    with pytest.raises(PipelineError, match="psa.npy: PSA's CAM file has one map"):
        load_cam(psa, "is_cam", source.num_classes, size, classes=classes)
    beyond = tmp_path / "beyond.npy"
    np.save(beyond, {source.num_classes - 1: maps[0]})
    with pytest.raises(PipelineError, match=r"beyond.npy: keys .* are not 0 followed by sorted class ids"):
        load_cam(beyond, "cam", source.num_classes, size)
    other = tmp_path / "other.npy"
    np.save(other, {"scores": maps})
    with pytest.raises(PipelineError, match="other.npy: not a CAM file of this pipeline, SIPE, AE-SIPE, IRN or PSA"):
        load_cam(other)
    np.save(other, np.zeros(3))
    with pytest.raises(PipelineError, match="other.npy: not a CAM file"):
        load_cam(other)
