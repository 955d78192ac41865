"""Tests of data/: toy generator, dataset sources, transforms (docs/method.md §3)."""
import colorsys
import json
import pickle
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import toy
from data.datasets import ClassificationDataset, InferenceDataset
from data.sources import DATASETS, VOC_CLASSES, build_source
from data.transforms import LARGEST_CAM_SIDE, TrainTransform, capped_scales, scaled_images
from tools.io import PipelineError, read_label_png
from tools.normalization import denormalize, normalize
from tools.palette import voc_palette


def file_bytes(root):
    """{relative path: bytes} of every file under root."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def mask_set(path):
    values = set(np.unique(np.array(Image.open(path))).tolist())
    return values - {0, 255}


def xml_names(path):
    return [obj.findtext("name") for obj in ET.parse(path).getroot().iter("object")]


def write_jpeg(path, shape_hw=(8, 8), value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape_hw + (3,), value, dtype=np.uint8)).save(path)


def write_png(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="L").save(path)


def write_xml(path, names, part=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    objects = "".join(f"<object><name>{n}</name>{part or ''}</object>" for n in names)
    path.write_text(f"<annotation><filename>x.jpg</filename>{objects}</annotation>")


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return toy.generate(tmp_path_factory.mktemp("toy") / "toy")


# ---------------------------------------------------------------- toy generator

def test_toy_same_seed_identical_other_seed_different(tmp_path):
    a = file_bytes(toy.generate(tmp_path / "a", num_train=6, num_val=2, seed=3))
    b = file_bytes(toy.generate(tmp_path / "b", num_train=6, num_val=2, seed=3))
    c = file_bytes(toy.generate(tmp_path / "c", num_train=6, num_val=2, seed=4))
    assert a == b
    assert len(a) == 8 * 3 + 4  # an image, its mask and annotation each; two lists, class names, toy.json
    jpegs = [name for name in a if name.endswith(".jpg")]
    assert len(jpegs) == 8 and all(a[name] != c[name] for name in jpegs)


def test_toy_layout(toy_root):
    assert (toy_root / "class_names.txt").read_text().splitlines() == list(toy.CLASS_NAMES)
    lists = toy_root / "ImageSets" / "Segmentation"
    train, val = (lists / "train.txt").read_text().split(), (lists / "val.txt").read_text().split()
    assert len(train) == 48 and len(val) == 16 and not set(train) & set(val)
    for image_id in train + val:
        with Image.open(toy_root / "JPEGImages" / f"{image_id}.jpg") as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert 96 <= img.width <= 128 and 96 <= img.height <= 128
            size = img.size
        with Image.open(toy_root / "SegmentationClass" / f"{image_id}.png") as mask:
            assert mask.mode == "P" and mask.size == size
            assert mask.getpalette()[:15] == voc_palette()[:15]
        assert (toy_root / "Annotations" / f"{image_id}.xml").is_file()


def test_toy_labels_xml_match_mask(toy_root):
    seen = set()
    for xml in sorted((toy_root / "Annotations").glob("*.xml")):
        names = xml_names(xml)
        classes = {toy.CLASS_NAMES.index(n) for n in names}
        assert 1 <= len(names) <= 3 and 1 <= len(classes) <= 2
        assert classes == mask_set(toy_root / "SegmentationClass" / f"{xml.stem}.png")
        seen |= classes
    assert seen == {1, 2, 3, 4}


def test_toy_objects_occlude_but_stay_visible():
    occluded = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        _, labels, instances, objects = toy.render(rng, (112, 112))
        assert 255 in labels  # void band on object edges
        for k, (_, _, shape) in enumerate(objects):
            visible = (instances == k + 1).sum()
            assert visible >= toy.MIN_VISIBLE * shape.sum()
            occluded += visible < shape.sum()
    assert occluded > 0


def test_toy_cli(tmp_path):
    toy.main(["--out", str(tmp_path / "t"), "--num-train", "2", "--num-val", "1", "--image-size", "64", "--seed", "5"])
    with Image.open(tmp_path / "t" / "JPEGImages" / "toy_0002.jpg") as img:
        assert 48 <= min(img.size) and max(img.size) <= 64
    assert (tmp_path / "t" / "ImageSets" / "Segmentation" / "val.txt").read_text() == "toy_0002\n"


def test_toy_cli_keeps_a_dataset_of_the_same_settings_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "t"
    argv = ["--out", str(out), "--num-train", "2", "--num-val", "1", "--image-size", "32"]
    toy.main(argv)
    assert json.loads((out / "toy.json").read_text()) == {"num_train": 2, "num_val": 1, "size": [24, 32], "seed": 0}
    before = file_bytes(out)
    toy.main(argv)
    assert capsys.readouterr().out.strip().endswith("(already there)") and file_bytes(out) == before
    for other in (["--num-train", "3"], ["--image-size", "48"], ["--seed", "1"], ["--style", "part"],
                  ["--extent", "0.3", "0.6"]):
        with pytest.raises(SystemExit) as exit_info:
            toy.main(argv + other)
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert exit_info.value.code == 2 and last.startswith(f"error: {out}: holds a toy dataset of other settings")
        assert file_bytes(out) == before


HALF = 40.0  # the half-length of the objects paint_one draws


def paint_one(shape, class_id, style, seed, angle, side=96):
    """One object of ``shape`` painted in ``style`` from ``default_rng(seed)`` in the middle of
    a black image of ``side`` px: (image, head, body), the masks of its pixels that lie in its
    textured end and outside it whatever share of its length (PART_RANGE) the end takes."""
    grid = np.mgrid[0:side, 0:side].astype(np.float32)
    geometry = (side / 2, side / 2, angle, 2 * HALF)
    u, v = toy.local_coords(grid, *geometry[:3])
    mask = toy.shape_mask(shape, u, v, geometry[3])
    image = np.zeros((side, side, 3), np.float32)
    toy.paint_object(np.random.default_rng(seed), image, grid, class_id, geometry, mask, style)
    surely_end, surely_not_end = (HALF * (1 - 2 * share) for share in toy.PART_RANGE)
    return image, mask & (u >= surely_end), mask & (u < surely_not_end)


def test_toy_part_style_is_plain_away_from_its_textured_end():
    # the same draws paint both styles: the textured end (at least PART_RANGE[0] of the
    # length, from u = +half) is the whole style's pattern, the far end one plain colour
    painted = {style: paint_one("square", 2, style, 3, 0.3)[0] for style in toy.STYLES}
    _, head, body = paint_one("square", 2, "whole", 3, 0.3)
    assert head.sum() > 200 and body.sum() > 200
    assert np.array_equal(painted["part"][head], painted["whole"][head])
    assert len(np.unique(painted["whole"][head], axis=0)) == 2  # checks: two colours
    assert len(np.unique(painted["part"][body], axis=0)) == 1
    assert len(np.unique(painted["whole"][body], axis=0)) == 2
    # instance: the body one colour of its own, the end that colour and the class's primary
    body_colour = np.unique(painted["instance"][body], axis=0)
    assert len(body_colour) == 1 and not np.array_equal(body_colour[0], painted["part"][body][0])
    end_colours = np.unique(painted["instance"][head], axis=0)
    assert len(end_colours) == 2 and any(np.array_equal(c, body_colour[0]) for c in end_colours)
    assert any(np.array_equal(c, painted["part"][body][0]) for c in end_colours)


def test_toy_instance_bodies_vary_and_textures_scale_with_the_image():
    colours = set()
    for seed in range(6):
        image, _, body = paint_one("disc", 1, "instance", seed, 0.0)
        colours.add(tuple(image[body][0]))
    assert len(colours) == 6  # no class colour in the body: the class shows on the end alone
    # stripes run across u: a twice larger image draws them twice as wide (TEXTURE_SIDE)
    assert toy.texture_scale((96, 200)) == 1.0 and toy.texture_scale((224, 300)) == 2.0
    u_axis = np.arange(400, dtype=np.float32)[None]
    narrow, wide = (np.count_nonzero(np.diff(toy.texture("stripes", u_axis, u_axis * 0, 6.5 * k, None)[0]))
                    for k in (1, 2))
    assert wide > 50 and abs(narrow - 2 * wide) <= 2
    speckle = toy.texture("speckle", u_axis.repeat(12, 0), u_axis.repeat(12, 0), 6.0, np.random.default_rng(0), 4)
    assert np.array_equal(speckle[::4].repeat(4, 0), speckle) and np.array_equal(speckle[:, ::4].repeat(4, 1), speckle)


def test_toy_fade_keeps_its_texture_periods_at_any_image_size(tmp_path, capsys):
    # the class texture on the end (the pixels of the class's primary colour) of one object
    # drawn on a 96 px and a 320 px image: the same marks for fade, wider ones for body
    def marks(style, side):
        image, head, _ = paint_one("disc", 1, style, 4, 0.0, side)
        primary = toy.family_colour(np.random.default_rng(4), toy.HUES["disc"])
        middle = slice(side // 2 - 48, side // 2 + 48)
        return (np.all(image == primary, axis=-1) & head)[middle, middle]

    assert marks("fade", 96).sum() > 100
    assert np.array_equal(marks("fade", 96), marks("fade", 320))
    assert not np.array_equal(marks("body", 96), marks("body", 320))
    # a fade dataset of textures scaled to the image (made before; no "textures" in its record) is refused
    out = tmp_path / "t"
    argv = ["--out", str(out), "--num-train", "2", "--num-val", "1", "--image-size", "32", "--style", "fade"]
    toy.main(argv)
    record = json.loads((out / "toy.json").read_text())
    assert record.pop("textures") == "fixed"
    (out / "toy.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit) as exit_info:
        toy.main(argv)
    assert exit_info.value.code == 2 and "holds a toy dataset of other settings" in capsys.readouterr().err


def test_toy_body_style_mottles_one_body_colour_and_keeps_the_class_on_the_end():
    image, head_part, body_part = paint_one("square", 2, "body", 5, 0.3)
    body, head = image[body_part], image[head_part]
    # the body: one colour times brightness factors around 1 (its channels keep their ratios)
    ratios = body / body.sum(axis=1, keepdims=True)
    assert np.abs(ratios - ratios.mean(axis=0)).max() < 1e-5
    brightness = body.sum(axis=1) / np.median(body.sum(axis=1))
    assert 0.6 * toy.BODY_CONTRAST < brightness.std() < 1.5 * toy.BODY_CONTRAST
    assert len(np.unique(body, axis=0)) > 100
    # the end: the class's checks in its colour family (green) over the mottled body
    green = [p for p in head if p[1] > 1.3 * max(p[0], p[2])]
    assert len(green) > 0.2 * len(head)
    # instance draws the same objects without the mottling
    plain, _, _ = paint_one("square", 2, "instance", 5, 0.3)
    assert len(np.unique(plain[body_part], axis=0)) == 1


def circular_distance(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


def test_toy_hint_style_draws_body_hues_around_the_class_centre_and_otherwise_paints_as_body():
    for class_id, name in enumerate(toy.CLASS_NAMES[1:], start=1):
        hues = []
        for seed in range(12):
            hinted, head, body_part = paint_one(name, class_id, "hint", seed, 0.3)
            mottled, _, _ = paint_one(name, class_id, "body", seed, 0.3)
            assert body_part.sum() > 500
            body = hinted[body_part]
            hue = colorsys.rgb_to_hsv(*(body.mean(axis=0) / 255.0))[0] * 360.0
            assert circular_distance(hue, toy.BODY_HUES[name]) <= toy.BODY_HUE_SPREAD + 0.5, (name, seed, hue)
            hues.append(hue)
            # the same mottling and the same end as body: only the body's colour differs
            brightness = body.sum(axis=1) / body.sum(axis=1).max()
            other = mottled[body_part].sum(axis=1)
            assert np.allclose(brightness, other / other.max(), atol=1e-4)
            assert not np.allclose(hinted[head], mottled[head])  # the body shows between the end's marks
        # the hue varies within the class's range: a hint, not a name
        assert max(circular_distance(a, b) for a in hues for b in hues) > toy.BODY_HUE_SPREAD


def test_toy_fade_style_carries_the_class_texture_from_the_end_over_part_of_the_body():
    extent, start = 2 * HALF, 0.2 * HALF
    fade_end = start - toy.FADE_SHARE * (start + HALF)
    u = np.linspace(-HALF, HALF, 81, dtype=np.float32)[None]
    strength = toy.texture_strength(u, extent, start, "fade")[0, :, 0]
    assert np.allclose(strength[u[0] >= start], 1.0) and np.all(strength[u[0] <= fade_end] == 0)
    between = (u[0] > fade_end) & (u[0] < start)
    assert np.allclose(strength[between], (u[0][between] - fade_end) / (start - fade_end), atol=1e-6)
    assert set(np.unique(toy.texture_strength(u, extent, start, "body"))) == {0.0, 1.0}
    for class_id, name in enumerate(toy.CLASS_NAMES[1:], start=1):
        for seed in range(4):
            faded, head, body_part = paint_one(name, class_id, "fade", seed, 0.0)
            mottled, _, _ = paint_one(name, class_id, "body", seed, 0.0)
            # the same draws: the end as body paints it, the body next to the end with the class
            # texture on it, its far part (u < -18 whatever share the end takes) plain
            assert np.array_equal(faded[head], mottled[head])
            near, far = body_part.copy(), body_part.copy()
            near[:, :40], far[:, 30:] = False, False  # u runs along the columns at angle 0
            assert near.sum() > 100 and far.sum() > 100
            assert np.abs(faded - mottled).sum(axis=2)[near].mean() > 1.0, (name, seed)
            assert np.array_equal(faded[far], mottled[far])


def test_toy_cli_style_and_extent(tmp_path, capsys):
    out = tmp_path / "t"
    toy.main(["--out", str(out), "--num-train", "2", "--num-val", "1", "--image-size", "64", "--style", "part",
              "--extent", "0.4", "0.7"])
    record = json.loads((out / "toy.json").read_text())
    assert record["style"] == "part" and record["extent"] == [0.4, 0.7]
    for bad in (["--extent", "0.7", "0.4"], ["--extent", "0", "0.5"], ["--extent", "0.5", "1.5"],
                ["--style", "half"]):
        with pytest.raises(SystemExit) as exit_info:
            toy.main(["--out", str(tmp_path / "u")] + bad)
        assert exit_info.value.code == 2 and "--" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "u").exists()


def test_toy_loads_as_custom_source(toy_root):
    source = build_source("custom", toy_root)
    assert source.class_names == list(toy.CLASS_NAMES) and source.num_classes == 5
    assert len(source.ids("train")) == 48 and len(source.ids("val")) == 16
    source.check_split("train")
    source.check_split("val")
    for image_id in source.ids("val"):
        assert set(source.labels(image_id).tolist()) == mask_set(source.mask_path(image_id))
    item = InferenceDataset(source, "val")[0]
    assert item["keys"].dtype == np.int64 and item["keys"][0] == 0
    assert item["keys"][1:].tolist() == source.labels(item["name"]).tolist()
    assert item["image"].dtype == np.uint8 and item["image"].shape[2] == 3
    assert InferenceDataset(source, "val", ids=["toy_0050"])[0]["name"] == "toy_0050"
    assert "scaled" not in item
    scaled = InferenceDataset(source, "val", scales=(1.0, 0.5))[0]["scaled"]  # make_cam's, built in the worker
    for got, want in zip(scaled, scaled_images(item["image"], (1.0, 0.5)), strict=True):
        assert torch.equal(got, want)


def test_an_image_above_the_largest_side_is_seen_at_that_side(toy_root):
    assert capped_scales((3000, 4000), (1.0, 0.5, 2.0), LARGEST_CAM_SIDE) == [0.256, 0.128, 0.512]
    assert capped_scales((375, 500), (1.0, 0.5, 2.0), LARGEST_CAM_SIDE) == [1.0, 0.5, 2.0]  # VOC: as it is
    assert capped_scales((640, 480), (1.5,), 640) == [1.5]  # the largest side itself: as it is
    source = build_source("custom", toy_root)
    item = InferenceDataset(source, "val", scales=(1.0, 2.0), largest_side=40)[0]
    height, width = item["image"].shape[:2]  # the image as it is
    assert width > height > 40
    assert [tuple(scaled.shape[-2:]) for scaled in item["scaled"]] == [(round(height * 40 / width), 40),
                                                                       (round(height * 80 / width), 80)]


def test_classification_dataset(toy_root):
    source = build_source("custom", toy_root)
    dataset = ClassificationDataset(source, "train", TrainTransform((48, 64), 56), seed=1)
    item = dataset[5]
    assert item["image"].shape == (3, 56, 56) and item["image"].dtype == torch.float32
    assert item["valid"].shape == (56, 56)
    expected = np.zeros(4, dtype=np.float32)
    expected[source.labels(item["name"]) - 1] = 1
    assert np.array_equal(item["label"].numpy(), expected)
    assert torch.equal(dataset[5]["image"], item["image"])  # same epoch and index: same sample
    dataset.set_epoch(1)
    assert not torch.equal(dataset[5]["image"], item["image"])


# ---------------------------------------------------------------- VOC

@pytest.fixture
def voc_devkit(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for image_id in "abcdef":
        write_jpeg(root / "JPEGImages" / f"{image_id}.jpg")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("a\nb\n\nb\n")
    (lists / "val.txt").write_text("c\n")
    write_xml(root / "Annotations" / "a.xml", ["person", "dog"], part="<part><name>hand</name></part>")
    write_xml(root / "Annotations" / "b.xml", ["cat"])
    write_xml(root / "Annotations" / "c.xml", ["bus"])
    write_xml(root / "Annotations" / "e.xml", [])
    blank = np.zeros((8, 8), dtype=np.uint8)
    for image_id, value in {"a": 12, "c": 6, "d": 12, "e": 3, "f": 7}.items():
        mask = blank.copy()
        mask[:3], mask[3] = value, 255
        write_png(root / "SegmentationClassAug" / f"{image_id}.png", mask)
    write_png(root / "SegmentationClass" / "a.png", blank)
    write_png(root / "SegmentationClass" / "c.png", blank)
    write_png(root / "SegmentationClass" / "f.png", np.full((8, 8), 5))
    return tmp_path / "VOCdevkit"


def test_voc_lists(voc_devkit):
    source = build_source("voc", voc_devkit)
    assert source.root == voc_devkit / "VOC2012"
    assert source.num_classes == 21 and source.class_names[1:] == list(VOC_CLASSES)
    assert source.ids("train") == ["a", "b"]  # blank line skipped, duplicate dropped
    assert source.ids("val") == ["c"]
    assert source.ids("train_aug") == ["a", "b", "d", "e", "f"]


def test_voc_labels_and_masks(voc_devkit):
    source = build_source("voc", voc_devkit / "VOC2012")
    assert source.labels("a").tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("person") + 1]
    assert source.labels("b").tolist() == [8]
    assert source.labels("d").tolist() == [12]  # no XML: from the mask, 0 and 255 left out
    assert source.labels("e").tolist() == [3]  # XML without objects: from the mask
    assert source.labels("f").tolist() == [7]  # label fallback prefers SegmentationClassAug
    assert source.mask_path("f") == source.root / "SegmentationClass" / "f.png"
    assert source.mask_path("d") == source.root / "SegmentationClassAug" / "d.png"
    assert source.mask_path("b") is None
    assert source.labels("a").dtype == np.int64
    source.check_split("train_aug")


def test_missing_roots_explain_how_to_get_data(tmp_path):
    missing = tmp_path / "nowhere"
    for dataset, hint in (("voc", "VOCtrainval"), ("coco", "annotations_trainval2014"), ("custom", "data.toy")):
        with pytest.raises(PipelineError, match=hint) as info:
            build_source(dataset, missing)
        assert str(missing) in str(info.value)
    assert DATASETS == ("voc", "coco", "custom")
    with pytest.raises(PipelineError, match="unknown dataset"):
        build_source("imagenet", missing)


def test_list_naming_missing_image(voc_devkit):
    list_path = voc_devkit / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    list_path.write_text("c\nghost_42\n")
    with pytest.raises(PipelineError) as info:
        build_source("voc", voc_devkit).ids("val")
    assert str(list_path) in str(info.value) and "ghost_42" in str(info.value)


def test_missing_split_list_and_aug_folder(voc_devkit, toy_root):
    with pytest.raises(PipelineError, match="trainval.txt"):
        build_source("custom", toy_root).ids("trainval")
    root = voc_devkit / "VOC2012"
    for mask in (root / "SegmentationClassAug").iterdir():
        mask.unlink()
    (root / "SegmentationClassAug").rmdir()
    with pytest.raises(PipelineError, match="SegmentationClassAug"):
        build_source("voc", voc_devkit).ids("train_aug")


def test_image_without_labels(voc_devkit):
    root = voc_devkit / "VOC2012"
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\nnolabel\n")
    write_jpeg(root / "JPEGImages" / "nolabel.jpg")
    source = build_source("voc", voc_devkit)
    assert source.ids("train") == ["a", "b", "nolabel"]  # checked lazily, not in ids()
    with pytest.raises(PipelineError) as info:
        source.labels("nolabel")
    message = str(info.value)
    assert "'nolabel'" in message and str(root / "Annotations" / "nolabel.xml") in message
    with pytest.raises(PipelineError, match="nolabel"):
        source.check_split("train")


def test_custom_unknown_class_name(toy_root, tmp_path):
    root = tmp_path / "custom"
    write_jpeg(root / "JPEGImages" / "x.jpg")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "all.txt").write_text("x\n")
    (root / "class_names.txt").write_text("background\ncat\n")
    write_xml(root / "Annotations" / "x.xml", ["dog"])
    source = build_source("custom", root)
    assert source.ids("all") == ["x"]
    with pytest.raises(PipelineError, match="'dog'") as info:
        source.labels("x")
    assert str(root / "Annotations" / "x.xml") in str(info.value)
    (root / "class_names.txt").write_text("cat\ndog\n")
    with pytest.raises(PipelineError, match="background"):
        build_source("custom", root)


def test_more_classes_than_a_label_png_holds_is_an_error(tmp_path):
    """Label PNGs hold class ids 0..254 (255 is ignore): a 256th class would wrap to another id."""
    root = tmp_path / "custom"
    write_jpeg(root / "JPEGImages" / "x.jpg")
    names = ["background", *(f"class{k}" for k in range(1, 255))]
    (root / "class_names.txt").write_text("".join(f"{name}\n" for name in names))
    assert build_source("custom", root).num_classes == 255
    (root / "class_names.txt").write_text("".join(f"{name}\n" for name in [*names, "class255"]))
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(root / 'class_names.txt'))}: 256 classes "
                                            r"\(background included\) do not fit a label PNG"):
        build_source("custom", root)


def test_more_coco_categories_than_a_label_png_holds_is_an_error(coco_root):
    pytest.importorskip("pycocotools")
    path = coco_root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["categories"] = [dict(id=k, name=f"c{k}") for k in range(1, 256)]
    path.write_text(json.dumps(data))
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(path))}: 256 classes"):
        build_source("coco", coco_root).class_names


# ---------------------------------------------------------------- transforms

def test_normalize_roundtrip():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tensor = normalize(image)
    assert tensor.shape == (3, 5, 7) and tensor.dtype == torch.float32
    assert tensor[0, 0, 0].item() == pytest.approx((image[0, 0, 0] / 255 - 0.485) / 0.229, abs=1e-6)
    back = denormalize(tensor[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(back, image / 255.0, atol=1e-5)


def test_train_transform_pads_small_image():
    image = np.random.default_rng(1).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    transform = TrainTransform(resize_long=(20, 20), crop_size=32, flip=False)
    offsets = set()
    for seed in range(10):
        out, valid = transform(image, np.random.default_rng(seed))
        assert out.shape == (3, 32, 32) and valid.shape == (32, 32) and valid.dtype == torch.float32
        ys, xs = torch.nonzero(valid, as_tuple=True)
        y0, x0 = int(ys.min()), int(xs.min())
        assert valid.sum() == 200 and valid[y0:y0 + 10, x0:x0 + 20].all()
        assert torch.equal(out[:, y0:y0 + 10, x0:x0 + 20], normalize(image))
        assert not (out * (1 - valid)).any()  # padding is 0
        offsets.add((y0, x0))
    assert len(offsets) > 3


def test_train_transform_resize_flip_crop():
    image = np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    big = TrainTransform(resize_long=(50, 70), crop_size=100)
    widths = set()
    for seed in range(10):
        _, valid = big(image, np.random.default_rng(seed))
        height, width = int(valid.any(1).sum()), int(valid.any(0).sum())
        assert 50 <= width <= 70 and height == round(30 * width / 40)
        widths.add(width)
    assert len(widths) > 3
    exact = TrainTransform(resize_long=(40, 40), crop_size=40)
    flips = set()
    for seed in range(10):
        out, valid = exact(image, np.random.default_rng(seed))
        assert out.shape == (3, 40, 40) and valid.shape == (40, 40) and valid.sum() == 30 * 40
        y0 = int(torch.nonzero(valid)[0, 0])
        flipped = torch.equal(out[:, y0:y0 + 30], normalize(image[:, ::-1]))
        assert flipped or torch.equal(out[:, y0:y0 + 30], normalize(image))
        flips.add(flipped)
    assert flips == {True, False}
    _, valid = TrainTransform(resize_long=(60, 80), crop_size=40)(image, np.random.default_rng(0))
    assert valid.all()


def pil(image, size_hw, resample=Image.BICUBIC):
    return np.asarray(Image.fromarray(image).resize((size_hw[1], size_hw[0]), resample))


def test_train_resize_is_pil_bicubic_of_the_uint8_image():
    image = np.random.default_rng(4).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out, valid = TrainTransform(resize_long=(52, 52), crop_size=64, flip=False)(image, np.random.default_rng(0))
    y0, x0 = (int(v) for v in torch.nonzero(valid)[0])
    # long side 52: (round(30 * 52 / 40), 52) = (39, 52), PIL's bicubic then normalisation (docs/method.md §3)
    assert valid.sum() == 39 * 52
    assert torch.equal(out[:, y0:y0 + 39, x0:x0 + 52], normalize(pil(image, (39, 52))))


def test_scale_range_rescales_image_bicubic_and_labels_nearest():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, (40, 60)).astype(np.uint8)
    transform = TrainTransform(None, 96, flip=False, scale_range=(0.5, 1.5))
    factors = set()
    for seed in range(6):
        factor = np.random.default_rng(seed).uniform(0.5, 1.5)  # the first draw (docs/method.md §9: IRN's rescale)
        size = (round(40 * factor), round(60 * factor))
        out, out_labels = transform.with_labels(image, labels, np.random.default_rng(seed))
        valid = out_labels != 255
        y0, x0 = (int(v) for v in torch.nonzero(valid)[0])
        assert int(valid.sum()) == size[0] * size[1]
        assert torch.equal(out[:, y0:y0 + size[0], x0:x0 + size[1]], normalize(pil(image, size)))
        expected = pil(labels, size, Image.NEAREST).astype(np.int64)
        assert np.array_equal(out_labels[y0:y0 + size[0], x0:x0 + size[1]].numpy(), expected)
        factors.add(size)
    assert len(factors) > 3


def test_scaled_images_are_pil_bicubic_per_scale():
    image = np.random.default_rng(6).integers(0, 256, (25, 33, 3), dtype=np.uint8)
    scaled = scaled_images(image, (1.0, 0.5, 1.5, 2.0))
    assert torch.equal(scaled[0][0], normalize(image))
    for tensor, scale in zip(scaled[1:], (0.5, 1.5, 2.0)):
        size = (round(25 * scale), round(33 * scale))
        assert torch.equal(tensor[0], normalize(pil(image, size)))


def test_train_transform_deterministic():
    image = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    transform = TrainTransform(resize_long=(40, 80), crop_size=48)
    a = transform(image, np.random.default_rng(7))
    b = transform(image, np.random.default_rng(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    others = [transform(image, np.random.default_rng(s))[0] for s in range(8, 12)]
    assert any(not torch.equal(a[0], other) for other in others)


# ---------------------------------------------------------------- COCO

def rle_counts(mask):
    """Uncompressed COCO RLE counts of a binary mask (column-major, starting with zeros)."""
    flat = mask.flatten(order="F").astype(np.int64)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], changes])).tolist()


def rectangle(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    crowd = np.zeros((40, 50), dtype=np.uint8)
    crowd[0:10, 40:50] = 1
    images = [(42, 40, 50), (7, 20, 20), (9, 20, 20), (11, 20, 20)]
    annotations = [
        dict(id=1, image_id=42, category_id=18, iscrowd=0, segmentation=rectangle(20, 10, 30, 20), area=100),
        dict(id=2, image_id=42, category_id=1, iscrowd=0, segmentation=rectangle(5, 5, 45, 35), area=1200),
        dict(id=3, image_id=42, category_id=3, iscrowd=1, area=100,
             segmentation=dict(counts=rle_counts(crowd), size=[40, 50])),
        dict(id=4, image_id=7, category_id=3, iscrowd=0, segmentation=rectangle(2, 2, 10, 10), area=64),
        dict(id=5, image_id=9, category_id=1, iscrowd=1, area=400,
             segmentation=dict(counts=[0, 400], size=[20, 20])),
    ]
    data = dict(
        images=[dict(id=i, file_name=f"COCO_val2014_{i:012d}.jpg", height=h, width=w) for i, h, w in images],
        annotations=[dict(a, bbox=[0, 0, 1, 1]) for a in annotations],
        categories=[dict(id=18, name="dog"), dict(id=1, name="person"), dict(id=3, name="car")],
    )
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    for i, h, w in images:
        write_jpeg(root / "val2014" / f"COCO_val2014_{i:012d}.jpg", (h, w))
    return root


def test_coco_ids_labels_masks(coco_root):
    pytest.importorskip("pycocotools")
    source = build_source("coco", coco_root)
    assert source.class_names == ["background", "person", "car", "dog"] and source.num_classes == 4
    assert source.ids("val") == ["COCO_val2014_000000000007", "COCO_val2014_000000000042"]
    assert source.labels("COCO_val2014_000000000042").tolist() == [1, 3]
    assert source.labels("COCO_val2014_000000000007").tolist() == [2]
    assert source.image_path("COCO_val2014_000000000007") == coco_root / "val2014" / "COCO_val2014_000000000007.jpg"
    source.check_split("val")
    with pytest.raises(PipelineError, match="COCO mask not rendered"):  # never rendered by a getter
        source.mask_path("COCO_val2014_000000000042")
    source.render_masks(source.ids("val"))
    path = source.mask_path("COCO_val2014_000000000042")
    assert path == coco_root / "semantic_masks" / "val2014" / "COCO_val2014_000000000042.png"
    with Image.open(path) as img:
        assert img.mode == "P"
        mask = np.array(img)
    assert mask.shape == (40, 50)
    # annotation order, as the published masks: the person (annotated after the dog) covers it
    assert mask[25, 10] == 1 and mask[15, 25] == 1
    assert mask[7, 42] == 1 and mask[2, 48] == 0  # crowd region: background by default
    assert mask[38, 2] == 0
    assert set(np.unique(mask).tolist()) == {0, 1}
    Image.fromarray(np.zeros((40, 50), dtype=np.uint8)).save(path)
    source.render_masks(source.ids("val"))
    assert not np.array(Image.open(source.mask_path("COCO_val2014_000000000042"))).any()  # cached, not redrawn


@pytest.mark.parametrize("crowd", ["background", "ignore"])
def test_coco_masks_rendered_in_workers_equal_pycocotools_ann_to_mask(coco_root, crowd):
    pytest.importorskip("pycocotools")
    source = build_source("coco", coco_root, coco_crowd=crowd)
    names = source.ids("val")
    source.render_masks(names, workers=2)
    api, class_of = source._api("val"), source._class_of_category
    for name in names:
        number = int(name.rsplit("_", 1)[1])
        info = api.imgs[number]
        expected = np.zeros((info["height"], info["width"]), dtype=np.uint8)
        covered = np.zeros(expected.shape, dtype=bool)
        for ann in api.imgToAnns[number]:  # pycocotools' own decoding, as the published masks
            region = api.annToMask(ann).astype(bool)
            if ann["iscrowd"]:
                covered |= region
            else:
                expected[region] = class_of[ann["category_id"]]
        if crowd == "ignore":
            expected[covered & (expected == 0)] = 255
        assert np.array_equal(read_label_png(source.mask_path(name)), expected), name


def test_a_pickled_coco_source_leaves_the_annotation_file_behind(coco_root):
    pytest.importorskip("pycocotools")
    source = build_source("coco", coco_root)
    source.ids("val")
    copy = pickle.loads(pickle.dumps(source))
    assert source._apis and copy._apis == {}  # a pool worker gets no annotation file to hold
    assert copy.class_names == source.class_names and copy.num_classes == 4
    source.render_masks(source.ids("val"))
    assert copy.mask_path("COCO_val2014_000000000042") == source.mask_path("COCO_val2014_000000000042")


def test_coco_crowd_ignore_marks_uncovered_crowd_pixels_255(coco_root):
    pytest.importorskip("pycocotools")
    source = build_source("coco", coco_root, coco_crowd="ignore")
    source.render_masks(["COCO_val2014_000000000042"])
    path = source.mask_path("COCO_val2014_000000000042")
    assert path.parent.parent.name == "semantic_masks_crowd_ignore"  # not the published masks' cache
    mask = np.array(Image.open(path))
    published = build_source("coco", coco_root).render_mask("COCO_val2014_000000000042")
    crowd = np.zeros((40, 50), dtype=bool)
    crowd[0:10, 40:50] = True
    expected = np.where(crowd & (published == 0), 255, published)
    assert np.array_equal(mask, expected) and mask[2, 48] == 255 and mask[7, 42] == 1
    with pytest.raises(PipelineError, match="crowd mode"):
        build_source("coco", coco_root, coco_crowd="drop")


def test_coco_cache_dir_and_missing_split(coco_root, tmp_path):
    pytest.importorskip("pycocotools")
    source = build_source("coco", coco_root, cache_dir=tmp_path / "cache")
    source.render_masks(["COCO_val2014_000000000007"])
    path = source.mask_path("COCO_val2014_000000000007")
    assert path == tmp_path / "cache" / "val2014" / "COCO_val2014_000000000007.png"
    assert set(np.unique(np.array(Image.open(path))).tolist()) == {0, 2}
    with pytest.raises(PipelineError, match="instances_train2014.json"):
        source.ids("train")
