"""Outputs tied to what made them (tools/provenance.py, docs/method.md §2): a retrained network or
changed flags never leave the old outputs standing under the new name."""
import argparse
import json
import os
import shutil

import numpy as np
import pytest

from data.sources import CustomSource
from tests.scripts import assert_error, run
from tools import provenance
from tools.cam_files import load_cam, save_cam
from tools.io import PipelineError

TRAIN = ["--pretrained", "none", "--no-frozen", "--device", "cpu", "--num-workers", "0", "--crop-size", "64", "--resize-long", "48",
         "64", "--batch-size", "2", "--epochs", "1", "--backbone", "resnet18"]


def record(**settings):
    return provenance.make_record("make_cam", {"checkpoint": "abc"}, settings, ["cam.pth step 4 abc"])


def test_the_digest_follows_inputs_and_settings_not_the_descriptions():
    assert record(scales=[1.0])["digest"] == record(scales=[1.0])["digest"]
    assert record(scales=[1.0])["digest"] != record(scales=[1.0, 0.5])["digest"]
    other = provenance.make_record("make_cam", {"checkpoint": "abd"}, {"scales": [1.0]})
    assert other["digest"] != record(scales=[1.0])["digest"]
    moved = provenance.make_record("make_cam", {"checkpoint": "abc"}, {"scales": [1.0]}, ["elsewhere/cam.pth"])
    assert moved["digest"] == record(scales=[1.0])["digest"]


def test_settings_leave_out_runtime_flags_and_normalise_tuples():
    args = argparse.Namespace(scales=(1.0, 0.5), work_dir="/a", num_workers=3, overwrite=True, split="train", amp=True)
    assert provenance.settings(args) == {"scales": [1.0, 0.5], "amp": True}
    assert provenance.settings(args, keep=("split",))["split"] == "train"


def test_a_folder_is_claimed_only_by_its_own_record(tmp_path):
    mine = record(scales=[1.0])
    assert provenance.outputs_to_remove(tmp_path, mine, ".npy", overwrite=False) is False  # empty
    (tmp_path / "a.npy").write_bytes(b"")
    with pytest.raises(PipelineError, match="record nothing of what made them; pass --overwrite"):
        provenance.outputs_to_remove(tmp_path, mine, ".npy", overwrite=False)
    (tmp_path / provenance.RECORD_NAME).write_text(json.dumps(record(scales=[1.0, 0.5])))
    with pytest.raises(PipelineError, match=r"another network, other data or other flags \(differs in settings.scales: "
                                            r"\[1.0, 0.5\] -> \[1.0\]\)"):
        provenance.outputs_to_remove(tmp_path, mine, ".npy", overwrite=False)
    assert provenance.outputs_to_remove(tmp_path, mine, ".npy", overwrite=True) is True
    (tmp_path / provenance.RECORD_NAME).write_text(json.dumps(mine))
    assert provenance.outputs_to_remove(tmp_path, mine, ".npy", overwrite=False) is False
    assert provenance.outputs_to_remove(tmp_path, mine, ".png", overwrite=False) is False  # none of its kind


def test_an_unreadable_record_is_named(tmp_path):
    (tmp_path / provenance.RECORD_NAME).write_text("{not json")
    with pytest.raises(PipelineError, match="made_by.json: not a provenance record"):
        provenance.read_record(tmp_path)


def test_a_cam_file_of_another_run_is_refused(tmp_path):
    path = tmp_path / "a.npy"
    save_cam(path, [0, 3], np.zeros((2, 4, 4)), made_by="1111")
    assert load_cam(path, made_by="1111")[0].tolist() == [0, 3]
    with pytest.raises(PipelineError, match="made by another run than the rest of its folder"):
        load_cam(path, made_by="2222")


def test_image_digests_are_kept_by_size_and_modification_time(tmp_path, monkeypatch):
    image, cache = tmp_path / "a.jpg", tmp_path / "cache" / "digests.json"
    image.write_bytes(b"first picture")
    digests = provenance.ImageDigests(cache)
    first = digests.of(image)
    digests.save()
    hashed = []
    monkeypatch.setattr(provenance, "file_digest", lambda path: hashed.append(path) or "new")
    assert provenance.ImageDigests(cache).of(image) == first and not hashed  # read from the cache
    image.write_bytes(b"other picture")  # the same size, a new modification time
    assert provenance.ImageDigests(cache).of(image) == "new" and hashed == [image]
    cache.write_text("{not json")
    assert provenance.ImageDigests(cache).of(image) == "new"  # an unreadable cache is made again
    with pytest.raises(PipelineError, match="gone.jpg: cannot read the image"):
        digests.of(tmp_path / "gone.jpg")
    cache.unlink()
    cache.mkdir()  # cannot be written: no error, the next stage hashes again
    unwritable = provenance.ImageDigests(cache)
    unwritable.of(image)
    assert "digests.json: cannot write" in unwritable.save()


def test_the_data_inputs_follow_the_class_list_the_labels_and_the_image_contents(make_toy, tmp_path):
    root = tmp_path / "toy"
    shutil.copytree(make_toy(4, 1, (32, 40), 5), root)
    digests = provenance.ImageDigests(tmp_path / "digests.json")

    def inputs():
        return provenance.data_inputs(CustomSource(root), "train", digests)

    before = inputs()
    assert set(before) == set(provenance.DATA_INPUTS)
    first, second = CustomSource(root).ids("train")[:2]
    image = root / "JPEGImages" / f"{first}.jpg"
    os.utime(image, ns=(1, 1))  # touched: the same content
    assert inputs() == before
    shutil.copy(root / "JPEGImages" / f"{second}.jpg", image)  # another picture under the old name
    assert provenance.changed_data({"inputs": before}, inputs()) == ["inputs.images"]
    names = (root / "class_names.txt").read_text().split()
    (root / "class_names.txt").write_text("\n".join([names[0], names[2], names[1], *names[3:]]) + "\n")
    changed = inputs()
    assert provenance.changed_data({"inputs": before}, changed)[:2] == ["inputs.class_names", "inputs.labels"]
    assert "labels" not in provenance.data_inputs(CustomSource(root), "train", digests, labels=False)


@pytest.mark.slow
def test_a_retrained_classifier_never_leaves_its_predecessors_cams(make_toy, tmp_path):
    toy = make_toy(8, 2, (64, 80), 0)
    data = ["--dataset", "custom", "--data-root", toy, "--work-dir", tmp_path]
    cam_dir = tmp_path / "cam"
    make_cam = ["make_cam.py", *data, "--split", "train", "--device", "cpu", "--num-workers", "0", "--scales", "1.0"]

    run("train_cam.py", *data, "--split", "train", "--method", "cam", *TRAIN)
    again = run("train_cam.py", *data, "--split", "train", "--method", "cam", *TRAIN)
    assert "nothing to do" in again.stderr
    run(*make_cam)
    first = {p.name: p.read_bytes() for p in cam_dir.glob("*.npy")}
    assert len(first) == 8

    assert_error(run("train_cam.py", *data, "--split", "train", "--method", "cam", *TRAIN, "--seed", "1",
                     check=False), tmp_path / "ckpt" / "cam.pth", r"other inputs or flags \(differs in settings.seed")
    run("train_cam.py", *data, "--split", "train", "--method", "cam", *TRAIN, "--seed", "1", "--overwrite")
    assert_error(run(*make_cam, check=False), cam_dir, r"another network, other data or other flags \(differs in inputs.checkpoint\)")
    assert {p.name: p.read_bytes() for p in cam_dir.glob("*.npy")} == first  # untouched

    run(*make_cam, "--overwrite")
    redone = {p.name: p.read_bytes() for p in cam_dir.glob("*.npy")}
    assert redone.keys() == first.keys() and all(redone[n] != first[n] for n in first)
    made_by = json.loads((cam_dir / provenance.RECORD_NAME).read_text())
    assert made_by["checkpoints"] == [f"cam.pth step 4 {provenance.file_digest(tmp_path / 'ckpt' / 'cam.pth')[:8]}"]

    # other inference flags: the same stop; a rerun of the same flags is done
    assert_error(run(*make_cam, "1.5", check=False), cam_dir, r"settings.scales: \[1.0\] -> \[1.0, 1.5\]")
    assert "0 of 8 images to do" in run(*make_cam).stderr

    # downstream: the row says which checkpoint made what it scored; the labels record it too
    run("eval_cam.py", *data, "--split", "train", "--map", "cam", "--threshold", "0.3", "--tag", "CAM")
    row = json.loads((tmp_path / "results.json").read_text())["CAM"]
    assert row["made_by"] == made_by["checkpoints"]
    assert f"| {made_by['checkpoints'][0]} |" in (tmp_path / "results.md").read_text()
    labels = ["make_affinity_labels.py", *data, "--split", "train", "--mode", "psa", "--crf-workers", "0"]
    run(*labels)
    label_record = json.loads((tmp_path / "affinity_labels" / provenance.RECORD_NAME).read_text())
    assert label_record["inputs"]["cams"] == made_by["digest"]
    assert label_record["inputs"]["images"] == made_by["inputs"]["images"] and "labels" not in label_record["inputs"]
    assert label_record["checkpoints"] == made_by["checkpoints"]
    assert_error(run(*labels, "--high-alpha", "16", check=False), tmp_path / "affinity_labels",
                 r"settings.high_alpha: 32 -> 16")
