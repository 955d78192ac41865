"""ladder_figure.py: the picture of a run's ladder, on a tiny synthetic run directory (CAM
files, walk labels and segmentation predictions written here, no network trained)."""
import json

import numpy as np
import pytest
from PIL import Image

from data.sources import build_source
from ladder_figure import cam_labels
from tests.scripts import run
from tools.cam_files import save_cam
from tools.io import image_size, read_label_png, write_label_png

HEIGHT, GAP, TITLE = 40, 4, 16  # --height 40; labelled_grid's gap and title row


@pytest.fixture(scope="module")
def toy(make_toy):
    return make_toy(num_train=4, num_val=2, size=(40, 56), seed=7)


def class_maps(source, name, value):
    """keys and [K, H, W] maps: background 1 - value, every class of the image at ``value``."""
    gt = read_label_png(source.mask_path(name))
    keys = np.unique(np.concatenate([[0], gt[(gt != 0) & (gt != 255)]]))
    cam = np.full((len(keys), *gt.shape), value, np.float32)
    cam[0] = 1 - value
    return keys, cam


def make_run(toy, work, method="ae_sipe", walk=True, segmentation=True):
    """A run directory with the files the figure reads, made by hand for the toy set's images."""
    source = build_source("custom", toy)
    (work / "cam").mkdir(parents=True)
    for name in source.ids("train"):
        keys, cam = class_maps(source, name, 0.6)
        maps = {"plain_cam": cam, "is_cam": cam} if method != "cam" else {}
        save_cam(work / "cam" / f"{name}.npy", keys, cam, method=method, num_classes=source.num_classes, **maps)
        if walk:
            (work / "pseudo_labels").mkdir(exist_ok=True)
            write_label_png(work / "pseudo_labels" / f"{name}.png", read_label_png(source.mask_path(name)))
    if segmentation:
        (work / "segmentation_crf" / "val").mkdir(parents=True)
        for name in source.ids("val"):
            write_label_png(work / "segmentation_crf" / "val" / f"{name}.png",
                            np.zeros(image_size(source.image_path(name)), np.uint8))
    (work / "results.json").write_text(json.dumps({"CAM": {"miou": 50.0, "sweep": {"0.3": 40.0, "0.7": 50.0}}}))
    return source


def draw(toy, work, *extra):
    result = run("ladder_figure.py", "--dataset", "custom", "--data-root", toy, "--work-dir", work,
                 "--images", "2", "--height", str(HEIGHT), *extra)
    return result.stdout, np.asarray(Image.open(work / "ladder.png").convert("RGB"))


def blank_cells(figure, row):
    """How many grey (blank) cells cross the middle line of figure row ``row``."""
    line = (figure[TITLE + GAP + row * (HEIGHT + GAP) + HEIGHT // 2] == 230).all(-1)
    starts = np.flatnonzero(line[1:] & ~line[:-1])
    return len(starts)


def test_the_figure_has_a_column_per_stage_and_a_row_per_image(toy, tmp_path):
    make_run(toy, tmp_path)
    printed, figure = draw(toy, tmp_path)
    assert "columns: image, ground truth, CAM, IS-CAM, AE-IS-CAM, random walk, segmentation" in printed
    assert figure.shape[0] == TITLE + 4 * (HEIGHT + GAP) + GAP  # two train images, then two val images
    assert (tmp_path / "ladder.png").stat().st_size < 300_000
    # a train image has no segmentation file, a val image no CAM file and no walk labels:
    # those cells are left blank
    assert [blank_cells(figure, row) for row in range(4)] == [1, 1, 4, 4]


def test_the_columns_follow_the_files_of_the_run(toy, tmp_path):
    make_run(toy, tmp_path, method="sipe", walk=False, segmentation=False)
    printed, figure = draw(toy, tmp_path)
    assert printed.strip().endswith("columns: image, ground truth, CAM, IS-CAM")
    assert figure.shape[0] == TITLE + 2 * (HEIGHT + GAP) + GAP  # no segmentation: the train images alone
    assert [blank_cells(figure, row) for row in range(2)] == [0, 0]


def test_the_cam_column_uses_the_sweep_threshold(toy, tmp_path):
    source = make_run(toy, tmp_path)
    name = source.ids("train")[0]
    files = {name: tmp_path / "cam" / f"{name}.npy"}
    keys = class_maps(source, name, 0.6)[0]
    # the classes at 0.6: a constant background of 0.3 loses to them, 0.7 wins everywhere
    assert set(np.unique(cam_labels(source, files, "plain_cam", 0.3)[name])) == {keys[1]}
    assert set(np.unique(cam_labels(source, files, "plain_cam", 0.7)[name])) == {0}
    # without a threshold AE-IS-CAM's background is scaled by 0.8: 0.4 * 0.8 < 0.6
    assert set(np.unique(cam_labels(source, files, "cam")[name])) == {keys[1]}


def test_a_missing_run_directory_is_one_line(toy, tmp_path):
    result = run("ladder_figure.py", "--dataset", "custom", "--data-root", toy, "--work-dir", tmp_path / "none",
                 check=False)
    assert result.returncode == 2 and "not a run directory" in result.stderr
