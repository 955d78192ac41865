"""The embedded toy dataset: a deterministic generator of a small VOC-layout dataset (docs/method.md §3).

Four foreground classes, each with its own shape, colour family and texture:

=========  ==========  ==============  =========
class      shape       colour family   texture
=========  ==========  ==============  =========
disc       disc        red             stripes
square     square      green           checks
triangle   triangle    blue            dots
cross      plus sign   yellow          speckle
=========  ==========  ==============  =========

Every image holds one to three objects of one or two classes, of varied size (18%-50% of
the short side), position and rotation, partly occluding each other, on a cluttered
background (colour gradient, low-frequency colour noise, elongated blobs, some of them in
the objects' colour families, and line segments) with pixel noise on top.  Each side of an
image is drawn uniformly from ``size`` (an inclusive (lo, hi) range; an int gives square
images of that side).  Masks mark a one-pixel band on the inside of every object edge with
255 ("void"), like VOC.  The same seed gives byte-identical files on the same machine.

``style="part"``, ``"instance"``, ``"body"``, ``"hint"`` and ``"fade"`` paint objects with a discriminative part
instead (``paint_object``), like a VOC object whose head the classifier learns from and whose
body it does not need (docs/toy.md); ``extent`` sets the range of object sizes.

Usage: ``python -m data.toy --out DIR [--seed N] [--num-train N] [--num-val N] [--image-size PX]
[--style whole|part|instance|body|hint|fade] [--extent LO HI]``;
the folder's ``toy.json`` records the settings, and the command refuses a folder that holds
a toy dataset of other settings (a run's CAMs and labels were made on that one).
"""
import argparse
import colorsys
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from data.sources import LABELS_CSV
from tools import flags
from tools.io import PipelineError, write_image, write_json, write_label_png, write_text
from tools.palette import voc_palette

CLASS_NAMES = ("background", "disc", "square", "triangle", "cross")
HUES = {"disc": 0.0, "square": 120.0, "triangle": 220.0, "cross": 50.0}
TEXTURES = {"disc": "stripes", "square": "checks", "triangle": "dots", "cross": "speckle"}
EXTENT_RANGE = (0.18, 0.5)  # object extent as a fraction of the image's short side
STYLES = ("whole", "part", "instance", "body", "hint", "fade")  # how objects are painted (paint_object)
# the styles of objects with a body of their own colour: no class colour in the background
OWN_BODY_STYLES = ("instance", "body", "hint", "fade")
MOTTLED_STYLES = ("body", "hint", "fade")
# the styles whose textures and mottling grow with the image (TEXTURE_SIDE); ``fade`` draws
# them at the same periods at any size, finer than IRN's stride-4 cells (docs/toy.md)
SCALED_TEXTURE_STYLES = ("instance", "body", "hint")
PART_RANGE = (0.3, 0.45)  # "part" and OWN_BODY_STYLES: the textured end's share of the object's length
TEXTURE_SIDE = 112  # SCALED_TEXTURE_STYLES: the short side at which the textures keep their periods (4-8 px)
BODY_GRAIN = 3  # MOTTLED_STYLES: the mottling's cell in px (at TEXTURE_SIDE for SCALED_TEXTURE_STYLES)
BODY_CONTRAST = 0.25  # MOTTLED_STYLES: brightness factors 1 + BODY_CONTRAST x the cells' standard normal noise
BODY_HUES = {"disc": 180.0, "square": 0.0, "triangle": 90.0, "cross": 270.0}  # "hint": the centres of the body hues
BODY_HUE_SPREAD = 60.0  # "hint": a body's hue lies within this many degrees of its class's BODY_HUES centre
FADE_SHARE = 0.5  # "fade": the share of the body's length, from the end, over which the class texture fades out
MIN_VISIBLE = 0.4  # fraction of an object that later objects must leave visible
MIN_SIZE = 16  # the smallest image side
RECORD = "toy.json"  # the settings of a generated toy dataset
IGNORE = 255


def hsv_colour(hue, sat, val):
    """RGB float32 [3] in 0..255 from hue in degrees and saturation, value in [0, 1]."""
    return np.array(colorsys.hsv_to_rgb((hue / 360.0) % 1.0, sat, val), dtype=np.float32) * 255.0


def family_colour(rng, hue):
    """A colour of the family around ``hue`` (hue jitter +-15 degrees, saturated, bright)."""
    return hsv_colour(hue + rng.uniform(-15, 15), rng.uniform(0.55, 0.95), rng.uniform(0.6, 0.95))


def random_colour(rng):
    """Any hue, mostly muted."""
    return hsv_colour(rng.uniform(0, 360), rng.uniform(0.1, 0.75), rng.uniform(0.25, 0.85))


def local_coords(grid, cy, cx, angle):
    """Coordinates (u, v) of every pixel in a frame centred at (cy, cx), rotated by ``angle``."""
    dy, dx = grid[0] - cy, grid[1] - cx
    c, s = math.cos(angle), math.sin(angle)
    return c * dx + s * dy, c * dy - s * dx


def shape_mask(kind, u, v, extent):
    """Boolean mask of a shape of the given extent (diameter) in local coordinates."""
    half = extent / 2.0
    if kind == "disc":
        return u * u + v * v <= half * half
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.75 * half
    if kind == "triangle":  # equilateral, circumradius 1.1 * half: inside all three edges
        inradius = 0.55 * half
        normals = (math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
        return np.logical_and.reduce([u * math.cos(t) + v * math.sin(t) <= inradius for t in normals])
    arm = 0.34 * half  # cross: two bars of half-width ``arm``
    au, av = np.abs(u), np.abs(v)
    return ((au <= half) & (av <= arm)) | ((av <= half) & (au <= arm))


def texture(kind, u, v, period, rng, grain=2):
    """Pattern weight in [0, 1] of the secondary colour for every pixel (speckle: random
    ``grain`` x ``grain``-pixel grains)."""
    if kind == "stripes":
        return (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)
    if kind == "checks":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "dots":
        du, dv = u % period - period / 2, v % period - period / 2
        return (du * du + dv * dv <= (0.3 * period) ** 2).astype(np.float32)
    h, w = u.shape  # speckle
    grains = (rng.random((-(-h // grain), -(-w // grain))) < 0.5).astype(np.float32)
    return np.repeat(np.repeat(grains, grain, axis=0), grain, axis=1)[:h, :w]


def segment_mask(grid, p0, p1, half_width):
    """Boolean mask of the pixels within ``half_width`` of the segment p0-p1 (y, x points)."""
    d = np.subtract(p1, p0)
    py, px = grid[0] - p0[0], grid[1] - p0[1]
    t = np.clip((py * d[0] + px * d[1]) / max(float(d @ d), 1e-6), 0.0, 1.0)
    return (py - t * d[0]) ** 2 + (px - t * d[1]) ** 2 <= half_width * half_width


def background(rng, grid, class_hues=True):
    """A cluttered float32 [H, W, 3] background; 40 % of its blobs wear a class's colour
    family unless ``class_hues`` is false."""
    h, w = grid.shape[1:]
    short = min(h, w)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = grid[1] * math.cos(angle) + grid[0] * math.sin(angle)
    ramp = ((ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6))[..., None]
    image = random_colour(rng) * (1 - ramp) + random_colour(rng) * ramp
    image += cv2.resize(rng.normal(0, 25, (4, 4, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(4, 9)):
        hue = HUES[CLASS_NAMES[rng.integers(1, len(CLASS_NAMES))]]
        colour = family_colour(rng, hue) if rng.random() < 0.4 and class_hues else random_colour(rng)
        u, v = local_coords(grid, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, math.pi))
        a = rng.uniform(0.08, 0.3) * short
        b = a * rng.uniform(0.2, 0.5)
        image[(u / a) ** 2 + (v / b) ** 2 <= 1] = colour
    for _ in range(rng.integers(3, 8)):
        p0, p1 = rng.uniform(0, 1, 2) * (h, w), rng.uniform(0, 1, 2) * (h, w)
        image[segment_mask(grid, p0, p1, rng.uniform(0.5, 1.5))] = random_colour(rng)
    return image


def object_classes(rng, num_classes=len(CLASS_NAMES)):
    """Class ids (in 1..num_classes-1) of the objects of one image: 1-3 objects of 1-2 classes."""
    count = int(rng.integers(1, 4))
    present = 1 if count == 1 else int(rng.integers(1, 3))
    chosen = rng.choice(np.arange(1, num_classes), size=present, replace=False)
    rest = rng.choice(chosen, size=count - present)
    return [int(c) for c in np.concatenate([chosen, rest])]


def propose_object(rng, shape_hw, previous, extent_range=EXTENT_RANGE):
    """Random geometry (cy, cx, angle, extent) of an object, often overlapping the previous one."""
    h, w = shape_hw
    extent = rng.uniform(*extent_range) * min(h, w)
    margin = 0.3 * extent
    if previous is not None and rng.random() < 0.7:
        direction = rng.uniform(0, 2 * math.pi)
        distance = rng.uniform(0.45, 0.85) * (extent + previous[3]) / 2
        cy = previous[0] + distance * math.sin(direction)
        cx = previous[1] + distance * math.cos(direction)
    else:
        cy, cx = rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)
    return float(np.clip(cy, margin, h - margin)), float(np.clip(cx, margin, w - margin)), \
        rng.uniform(0, 2 * math.pi), extent


def place_objects(rng, classes, grid, mask_of=None, extent_range=EXTENT_RANGE):
    """Draw object geometries so that every object keeps MIN_VISIBLE of its pixels.

    ``mask_of(class_id, u, v, extent)`` is the shape of a class (default: the toy's).
    Returns (instances int [H, W] with 0 for background and k + 1 for object k, objects),
    objects being (class id, (cy, cx, angle, extent), shape mask) in drawing order.
    """
    mask_of = mask_of or (lambda class_id, u, v, extent: shape_mask(CLASS_NAMES[class_id], u, v, extent))
    instances = np.zeros(grid.shape[1:], dtype=np.int64)
    objects = []
    for class_id in classes:
        previous = objects[-1][1] if objects else None
        for _ in range(20):
            geometry = propose_object(rng, grid.shape[1:], previous, extent_range)
            u, v = local_coords(grid, *geometry[:3])
            mask = mask_of(class_id, u, v, geometry[3])
            trial = np.where(mask, len(objects) + 1, instances)
            if all((trial == k + 1).sum() >= MIN_VISIBLE * obj[2].sum() for k, obj in enumerate(objects)):
                instances = trial
                objects.append((class_id, geometry, mask))
                break
    return instances, objects


def texture_scale(shape_hw):
    """SCALED_TEXTURE_STYLES: how much coarser than at TEXTURE_SIDE the textures of an image of
    this size are drawn, so that a larger image shows the same picture, not finer marks."""
    return max(1.0, min(shape_hw) / TEXTURE_SIDE)


def end_start(rng, extent):
    """Where the textured end of an object of ``extent`` begins along u: it takes a random
    PART_RANGE share of the object's length, from u = +extent / 2."""
    return extent / 2 * (1 - 2 * rng.uniform(*PART_RANGE))


def texture_strength(u, extent, start, style):
    """[H, W, 1] strength of the class texture along an object: 1 on its end (u >= ``start``);
    on the body 0, or for ``fade`` falling linearly from 1 at the end to 0 over the FADE_SHARE of
    the body's length (start + extent / 2) next to it."""
    if style != "fade":
        return (u >= start).astype(np.float32)[..., None]
    return np.clip(1 - (start - u) / (FADE_SHARE * (start + extent / 2)), 0.0, 1.0).astype(np.float32)[..., None]


def paint_object(rng, image, grid, class_id, geometry, mask, style="whole"):
    """Paint one object into ``image`` (in place).  ``whole``: the class texture in the class's
    colour family all over.  ``part``: that texture on the end of the object that a random
    PART_RANGE share of its length takes, plain primary colour elsewhere.  ``instance``: a
    body of one colour drawn for this object (any hue), its end marked with the class texture
    in the class's colour on that body colour: the class shows on the end alone, and the
    object's own colour joins the end to the rest, as a VOC object's head and body.  ``body``:
    ``instance`` with a mottled body (``mottling``), a texture every class's objects share,
    so that a body is unlike the flat background blobs, as a VOC object's body (fur, skin,
    paint) is unlike the background it stands on, although it does not name the class.
    ``hint``: ``body`` with the body's hue drawn within BODY_HUE_SPREAD degrees of its class's
    BODY_HUES centre, so that a body hints at its class as a VOC object's body does (a cat's fur,
    a bus's paint) without naming it: each class's range overlaps its neighbours', and the class
    texture stays on the end alone (docs/toy.md).  ``fade``: ``body`` with the class texture
    carried on from the end over the body, fading (``texture_strength``), so that the end is the
    most discriminative part and the body, like a VOC object's fur, shows its class more faintly
    and meets the end without an edge; its textures and mottling keep their periods (4-8 px, 3 px
    grain) at any image size, finer than IRN's stride-4 cells, as most of a VOC object's texture
    is."""
    name = CLASS_NAMES[class_id]
    primary = family_colour(rng, HUES[name])
    secondary = primary * rng.uniform(0.35, 0.6)
    u, v = local_coords(grid, *geometry[:3])
    scale = texture_scale(mask.shape) if style in SCALED_TEXTURE_STYLES else 1.0
    weight = texture(TEXTURES[name], u, v, rng.uniform(4, 8) * scale, rng, round(2 * scale))[..., None]
    pattern = primary * (1 - weight) + secondary * weight
    if style == "part":
        pattern = np.where((u >= end_start(rng, geometry[3]))[..., None], pattern, primary)
    elif style in OWN_BODY_STYLES:
        hue = BODY_HUES[name] + rng.uniform(-1, 1) * BODY_HUE_SPREAD if style == "hint" else rng.uniform(0, 360)
        body = hsv_colour(hue, rng.uniform(0.45, 0.95), rng.uniform(0.45, 0.95))
        if style in MOTTLED_STYLES:
            body = body * mottling(rng, mask.shape, BODY_GRAIN * scale)
        mark = weight * texture_strength(u, geometry[3], end_start(rng, geometry[3]), style)
        pattern = body * (1 - mark) + primary * mark
    image[mask] = pattern[mask]


def mottling(rng, shape_hw, grain):
    """[H, W, 1] brightness factors around 1: smooth noise of ``grain``-pixel cells, the
    texture of MOTTLED_STYLES that every class's objects share."""
    h, w = shape_hw
    cells = rng.normal(0, 1, (int(h / grain) + 2, int(w / grain) + 2)).astype(np.float32)
    field = cv2.resize(cells, (w, h), interpolation=cv2.INTER_CUBIC)
    return (1 + BODY_CONTRAST * np.clip(field, -1.5, 1.5))[..., None]


def void_border(labels):
    """Set a one-pixel band on the inside of every object edge to IGNORE (VOC style)."""
    padded = np.pad(labels, 1, mode="edge")
    h, w = labels.shape
    neighbours = [padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    edge = np.logical_or.reduce([n != labels for n in neighbours]) & (labels > 0)
    return np.where(edge, IGNORE, labels).astype(np.uint8)


def render(rng, shape_hw, style="whole", extent=EXTENT_RANGE):
    """One image: (uint8 RGB [H, W, 3], uint8 labels [H, W], instances, objects as in place_objects)."""
    grid = np.mgrid[0:shape_hw[0], 0:shape_hw[1]].astype(np.float32)
    image = background(rng, grid, class_hues=style not in OWN_BODY_STYLES)
    instances, objects = place_objects(rng, object_classes(rng), grid, extent_range=extent)
    for k, (class_id, geometry, _) in enumerate(objects):
        paint_object(rng, image, grid, class_id, geometry, instances == k + 1, style)
    image += rng.normal(0, 5, image.shape)
    class_of = np.array([0] + [obj[0] for obj in objects])
    labels = void_border(class_of[instances])
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels, instances, objects


def annotation_xml(image_id, shape_hw, instances, objects, class_names=CLASS_NAMES):
    """VOC XML annotation text: one <object> per visible object, with its bounding box."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "toy"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", shape_hw[1]), ("height", shape_hw[0]), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for k, (class_id, _, _) in enumerate(objects):
        ys, xs = np.nonzero(instances == k + 1)
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[class_id]
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", xs.min()), ("ymin", ys.min()), ("xmax", xs.max()), ("ymax", ys.max())):
            ET.SubElement(box, tag).text = str(int(value) + 1)
    return ET.tostring(root, encoding="unicode") + "\n"


def extent_in_range(extent):
    """Whether (lo, hi) is a range of object extents: 0 < lo <= hi <= 1."""
    return 0 < extent[0] <= extent[1] <= 1


def side_range(size):
    """(lo, hi) inclusive range of an image side from an int or a pair."""
    lo, hi = (size, size) if isinstance(size, int) else size
    if not MIN_SIZE <= lo <= hi:
        raise ValueError(f"image size range must satisfy {MIN_SIZE} <= lo <= hi, got {size}")
    return int(lo), int(hi)


def write_sample(out_dir, image_id, rng, size, style="whole", extent=EXTENT_RANGE):
    """Render and write one image, its mask and its annotation."""
    lo, hi = side_range(size)
    shape_hw = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))
    image, labels, instances, objects = render(rng, shape_hw, style, extent)
    write_image(out_dir / "JPEGImages" / f"{image_id}.jpg", image)
    write_label_png(out_dir / "SegmentationClass" / f"{image_id}.png", labels, voc_palette())
    write_text(out_dir / "Annotations" / f"{image_id}.xml", annotation_xml(image_id, shape_hw, instances, objects))


def generate(out_dir, num_train=48, num_val=16, size=(96, 128), seed=0, style="whole", extent=EXTENT_RANGE):
    """Write the toy dataset (VOC layout plus class_names.txt) to ``out_dir``; return its path.

    Image i draws everything from ``numpy.random.default_rng([seed, i])``.  Ids are
    ``toy_0000``...; the first ``num_train`` form ``train``, the next ``num_val`` form ``val``.
    ``toy.json``, written last, records the settings (``settings``).  ``style`` and
    ``extent`` are those of ``render``.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if not extent_in_range(extent):
        raise ValueError(f"extent must satisfy 0 < lo <= hi <= 1, got {extent}")
    out_dir = Path(out_dir)
    ids = [f"toy_{i:04d}" for i in range(num_train + num_val)]
    for index, image_id in enumerate(ids):
        write_sample(out_dir, image_id, np.random.default_rng([seed, index]), size, style, extent)
    lists = out_dir / "ImageSets" / "Segmentation"
    write_text(lists / "train.txt", "".join(f"{i}\n" for i in ids[:num_train]))
    write_text(lists / "val.txt", "".join(f"{i}\n" for i in ids[num_train:]))
    write_text(out_dir / "class_names.txt", "".join(f"{n}\n" for n in CLASS_NAMES))
    write_json(out_dir / RECORD, settings(num_train, num_val, size, seed, style, extent))
    return out_dir


def settings(num_train, num_val, size, seed, style="whole", extent=EXTENT_RANGE):
    """The record of ``generate``'s settings that ``toy.json`` holds (style and extent only
    where they are not the defaults, so that the datasets made before them keep their record;
    an own-body style outside SCALED_TEXTURE_STYLES, ``fade``, records its fixed texture
    periods, so that a ``fade`` dataset made before them, with textures scaled to the image, is
    refused)."""
    record = {"num_train": num_train, "num_val": num_val, "size": list(side_range(size)), "seed": seed}
    if style != "whole":
        record["style"] = style
    if tuple(extent) != EXTENT_RANGE:
        record["extent"] = [float(e) for e in extent]
    if style in OWN_BODY_STYLES and style not in SCALED_TEXTURE_STYLES:
        record["textures"] = "fixed"
    return record


def recorded_settings(out_dir, wanted, record=RECORD, what="toy dataset", elsewhere="elsewhere"):
    """The settings that ``out_dir/toy.json`` (or ``record``) records: None when there is none
    (no dataset, or one whose writing was cut short: the record comes last), ``wanted`` when
    they are those; other settings are an error (a run's outputs were made on that one)."""
    path = Path(out_dir) / record
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path}: cannot read the settings of the dataset it records ({exc})") from exc
    if recorded != wanted:
        raise PipelineError(f"{out_dir}: holds a {what} of other settings ({recorded}, not {wanted}); "
                            f"remove it or write the new one {elsewhere}")
    return recorded


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the embedded toy dataset (VOC layout, docs/method.md §3).")
    parser.add_argument("--out", required=True, help="output folder (becomes the dataset root)")
    parser.add_argument("--seed", type=flags.non_negative_int, default=0,
                        help="random seed; the same seed gives identical files")
    parser.add_argument("--num-train", type=flags.non_negative_int, default=48,
                        help="number of images in the train list")
    parser.add_argument("--num-val", type=flags.non_negative_int, default=16, help="number of images in the val list")
    parser.add_argument("--image-size", type=flags.int_at_least(MIN_SIZE), default=128,
                        help="largest image side in pixels; each side is drawn from [3/4 of it, it]")
    parser.add_argument("--style", choices=STYLES, default="whole",
                        help="objects textured all over (whole), on one end and plain elsewhere (part), or of "
                             "a colour of their own with the class texture on one end (instance), the same "
                             "with mottled bodies (body), with body hues that hint at the class (hint), and "
                             "with the class texture fading from the end over half the body (fade: the toy run's; its "
                             "textures keep their 4-8 px periods at any image size)")
    parser.add_argument("--extent", nargs=2, type=flags.fraction, metavar=("LO", "HI"), default=EXTENT_RANGE,
                        action=flags.values_where(extent_in_range, "need 0 < LO <= HI"),
                        help="object size range as fractions of the image's short side")
    args = parser.parse_args(argv)
    size, extent = (max(MIN_SIZE, args.image_size * 3 // 4), args.image_size), tuple(args.extent)
    wanted = settings(args.num_train, args.num_val, size, args.seed, args.style, extent)
    try:
        recorded = recorded_settings(args.out, wanted, elsewhere="elsewhere (the drivers: another --work-dir)")
        if recorded is None and (Path(args.out) / LABELS_CSV).is_file():
            print(f"toy mode: {args.out} holds a dataset of its own ({LABELS_CSV}, no {RECORD}); used as it is")
            return
        if recorded is None:
            generate(args.out, args.num_train, args.num_val, size, args.seed, args.style, extent)
    except PipelineError as exc:
        parser.exit(2, f"error: {exc}\n")
    state = "made" if recorded is None else "already there"
    print(f"toy dataset: {args.num_train} train + {args.num_val} val images in {args.out} ({state})")


if __name__ == "__main__":
    main()
