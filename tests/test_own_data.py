"""Own data: image-level labels from labels.csv, no masks needed (data/sources.py, eval_cam,
the drivers)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data import toy
from data.sources import CustomSource
from tests.scripts import REPO, drive, run
from tools.cam_files import save_cam
from tools.io import PipelineError, read_label_png


def own_dataset(toy_root, out, masked=(), split_column=True, lists=False):
    """A copy of a toy set as a researcher brings it: JPEGs, class_names.txt and labels.csv
    (from the toy's own labels), no XML, masks only for the ids of ``masked``."""
    source = CustomSource(toy_root)
    shutil.copytree(toy_root / "JPEGImages", out / "JPEGImages")
    shutil.copy(toy_root / "class_names.txt", out / "class_names.txt")
    rows = ["image,labels" + (",split" if split_column else "")]
    for split in ("train", "val"):
        for name in source.ids(split):
            labels = " ".join(source.class_names[k] for k in source.labels(name))
            named = {0: name, 1: f"{name}.jpg", 2: f"JPEGImages/{name}.jpg"}[len(rows) % 3]  # each way of naming
            rows.append(f"{named},{labels}" + (f",{split}" if split_column else ""))
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    if masked:
        (out / "SegmentationClass").mkdir()
        for name in masked:
            shutil.copy(toy_root / "SegmentationClass" / f"{name}.png", out / "SegmentationClass" / f"{name}.png")
    if lists:
        shutil.copytree(toy_root / "ImageSets", out / "ImageSets")
    return out


@pytest.fixture(scope="module")
def toy_root(make_toy):
    return make_toy(8, 2, (64, 80), 3)


def test_labels_and_splits_come_from_the_csv(toy_root, tmp_path):
    reference = CustomSource(toy_root)
    own = CustomSource(own_dataset(toy_root, tmp_path / "own"))
    for split in ("train", "val"):
        assert own.ids(split) == reference.ids(split)
        for name in own.ids(split):
            assert own.labels(name).tolist() == reference.labels(name).tolist()
            assert own.mask_path(name) is None
    assert own.has_split("val") and not own.has_split("test")
    with pytest.raises(PipelineError, match=r"split list not found, and no row of .*labels.csv has split 'test' "
                                            r"\(splits there: train, val\)"):
        own.ids("test")


def test_the_csv_wins_over_the_xml_and_a_list_over_its_split_column(toy_root, tmp_path):
    root = tmp_path / "both"
    shutil.copytree(toy_root, root)
    source = CustomSource(toy_root)
    first = source.ids("train")[0]
    other = next(k for k in range(1, source.num_classes) if k not in source.labels(first))
    (root / "labels.csv").write_text(f"image,labels,split\n{first},{source.class_names[other]},val\n")
    both = CustomSource(root)
    assert both.labels(first).tolist() == [other]  # the CSV, not the XML
    assert both.labels(source.ids("train")[1]).tolist() == source.labels(source.ids("train")[1]).tolist()
    assert both.ids("val") == source.ids("val")  # the list file, not the CSV's split column


@pytest.mark.parametrize("text, problem", [
    ("picture,labels\na,x\n", r"row 1 \(the header\): header must name the columns image and labels"),
    ("", r"row 1 \(the header\): header must name the columns image and labels \(and optionally split\), "
         r"not nothing"),
    ("image,labels,split\n", r"a header and no rows"),
    ("image,labels,split\n\n  \n", r"a header and no rows"),
    ("image,labels,labels\n{id},{cls},{cls}\n", r"row 1 \(the header\): column 'labels' named 2 times"),
    ("image, image ,labels\n{id},{id},{cls}\n", r"row 1 \(the header\): column 'image' named 2 times"),
    ("image,labels,spilt\n{id},{cls},train\n", r"row 1 \(the header\): unknown column 'spilt'"),
    ("image,labels\n{id},{cls},train\n", r"row 2: 3 fields, the header names 2"),
    ("image,labels\n{id},zebra\n", r"row 2: 'zebra' is not a class of the class name file"),
    ("image,labels\n{id},\n", r"row 2: image '{id}' has no labels"),
    ("image,labels\n{id},{cls}\n{id}.jpg,{cls}\n", r"row 3: image '{id}' is named a second time"),
    ("image,labels\n,{cls}\n", r"row 2: no image named"),
    ("image,labels,split\n{id},{cls},train\nghost,{cls},train\n", r"split 'train': id 'ghost' has no image"),
])
def test_a_bad_csv_is_one_line_naming_the_file_and_the_row(toy_root, tmp_path, text, problem):
    root = own_dataset(toy_root, tmp_path / "own")
    source = CustomSource(toy_root)
    name = source.ids("train")[0]
    fill = {"id": name, "cls": source.class_names[1]}
    (root / "labels.csv").write_text(text.format(**fill))
    with pytest.raises(PipelineError, match=rf"labels.csv: {problem.format(**fill)}"):
        own = CustomSource(root)
        own.ids("train")
        own.labels(name)


def test_a_folder_with_its_own_labels_csv_is_used_as_it_is_in_toy_mode(toy_root, tmp_path, capsys):
    root = own_dataset(toy_root, tmp_path / "toy_data")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    toy.main(["--out", str(root), "--num-train", "160", "--num-val", "32"])
    assert "holds a dataset of its own" in capsys.readouterr().out
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_has_split_cli(toy_root, tmp_path):
    root = own_dataset(toy_root, tmp_path / "own")
    ask = [sys.executable, "-m", "data.sources", "--dataset", "custom", "--data-root", str(root), "--has-split"]
    assert subprocess.run([*ask, "val"], cwd=REPO).returncode == 0
    assert subprocess.run([*ask, "test"], cwd=REPO).returncode == 1


@pytest.mark.slow
def test_eval_scores_the_masked_images_and_says_so_or_writes_not_scored(toy_root, tmp_path):
    source = CustomSource(toy_root)
    names = source.ids("train")
    root = own_dataset(toy_root, tmp_path / "own", masked=names[:3])
    work = tmp_path / "run"
    for name in names:
        gt = read_label_png(source.mask_path(name))
        keys = np.concatenate([[0], source.labels(name)])
        cam = np.stack([(np.where(gt == 255, 0, gt) == k).astype(np.float32) for k in keys])
        save_cam(work / "cam" / f"{name}.npy", keys, cam)
    data = ["--dataset", "custom", "--data-root", root, "--work-dir", work, "--score-workers", "0"]
    result = run("eval_cam.py", *data, "--split", "train", "--map", "cam", "--tag", "CAM")
    row = json.loads((work / "results.json").read_text())["CAM"]
    assert row["images"] == 3 and row["listed"] == 8 and "3 of 8 images have masks" in row["note"]
    assert row["miou"] == 100.0  # the CAMs are the masks
    result = run("eval_cam.py", *data, "--split", "val", "--map", "cam", "--tag", "val CAM", "--sweep")
    assert "not scored" in result.stdout
    row = json.loads((work / "results.json").read_text())["val CAM"]
    assert row["miou"] is None and row["note"] == "not scored: no image of val has a mask"
    assert "| val CAM | - | - | - | not scored: no image of val has a mask |" in (work / "results.md").read_text()


@pytest.mark.slow
def test_a_dataset_without_masks_runs_through_the_driver(toy_root, tmp_path):
    """A labels.csv folder with no masks, no XML and no lists, as the toy mode's toy_data:
    every stage runs, every row says not scored, the segmentation network is trained."""
    work = tmp_path / "run"
    work.mkdir()
    own_dataset(toy_root, work / "toy_data")
    drive("run_voc.sh", work)
    results = json.loads((work / "results.json").read_text())
    assert set(results) == {"CAM", "IS-CAM", "AE-IS-CAM", "affinity labels", "random walk", "random walk + CRF",
                            "segmentation (val)", "segmentation + CRF (val)"}
    assert all(row["miou"] is None and row["note"].startswith("not scored") for row in results.values())
    assert (work / "ckpt" / "seg.pth").is_file()
    assert len(list((work / "pseudo_labels").glob("*.png"))) == 8
    assert len(list((work / "segmentation" / "val").glob("*.png"))) == 2
