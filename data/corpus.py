"""The classification corpus that stands in for ImageNet in the toy run (docs/toy.md).

A real run starts from ImageNet weights: features learned from far more classes than the
target dataset has, on other images, classes that differ mostly in their textures and
colours.  The toy run's stand-in is a ResNet trained with image-level labels on this corpus,
which shares no class, texture or shape with the toy: 96 classes, each a texture in a
colour family (eight textures the toy does not use times twelve hue families that divide the
hue circle, as ImageNet's colours leave none out), drawn at periods of 4-14 px over an object
body of any colour and of any of eight shapes the toy does not use (shape and body colour
mark an object, not its class: objects of two colours whose class shows in one of them, as
many of ImageNet's), one or two objects of one class per image (as ImageNet labels an image
with one class), on the toy's cluttered backgrounds.  The corpus is written in VOC layout
without masks (JPEGImages, Annotations, ImageSets/Segmentation/train.txt, class_names.txt),
so that ``pretrain.py`` reads it as any custom dataset.

Usage: ``python -m data.corpus --out DIR [--seed N] [--num-images N] [--image-size PX]``;
``corpus.json`` records the settings, and the command leaves a folder that holds the same
corpus as it is and refuses one of other settings (the toy run's cached backbone).
"""
import argparse
import math
from pathlib import Path

import numpy as np

from data.toy import (MIN_SIZE, annotation_xml, background, family_colour, hsv_colour, local_coords,
                      place_objects, recorded_settings, side_range)
from tools import flags
from tools.io import PipelineError, write_image, write_json, write_text

SHAPES = ("star", "ring", "hexagon", "ellipse", "crescent", "chevron", "bar", "corner")
# twelve families of 30 degrees around the circle (family_colour: +-15): every hue is in one
HUE_NAMES = ("red", "orange", "yellow", "chartreuse", "green", "spring", "cyan", "azure", "blue", "violet", "magenta",
             "rose")
HUES = {name: 30.0 * k for k, name in enumerate(HUE_NAMES)}
TEXTURES = ("waves", "rings", "grid", "blotches", "zigzag", "hatch", "bricks", "rays")
CLASS_NAMES = ("background", *(f"{hue}_{texture}" for hue in HUES for texture in TEXTURES))
RECORD = "corpus.json"  # the settings of a generated corpus
GENERATOR = 3  # 3: twelve hue families (2: four, none of the toy's; 1: classes of shape and hue); another is refused
PERIOD_RANGE = (4, 14)  # texture periods in px: fine and coarse, as ImageNet's textures come at many scales
EXTENT_RANGE = (0.4, 0.8)  # larger than the toy's objects: ImageNet's objects fill much of the picture


def corpus_shape_mask(shape, u, v, extent):
    """Boolean mask of one of SHAPES of the given extent in local coordinates (u, v)."""
    half = extent / 2.0
    radius, angle = np.hypot(u, v), np.arctan2(v, u)
    if shape == "star":  # five points: the radius swings between 0.45 and 1 of half
        return radius <= half * (0.725 + 0.275 * np.cos(5 * angle))
    if shape == "ring":
        return (radius <= half) & (radius >= 0.6 * half)
    if shape == "hexagon":
        return np.logical_and.reduce([u * math.cos(t) + v * math.sin(t) <= 0.87 * half
                                      for t in np.arange(6) * math.pi / 3])
    if shape == "ellipse":
        return (u / half) ** 2 + (v / (0.5 * half)) ** 2 <= 1
    if shape == "crescent":
        return (radius <= half) & (np.hypot(u - 0.45 * half, v) > 0.8 * half)
    if shape == "chevron":  # a V of two bars
        arm = 0.22 * half
        return (np.abs(np.abs(u) - (v + half) * 0.5) <= arm) & (np.abs(v) <= 0.8 * half) & (np.abs(u) <= half)
    if shape == "bar":
        return (np.abs(u) <= half) & (np.abs(v) <= 0.28 * half)
    arm = 0.3 * half  # corner: an L of two bars
    return (((np.abs(u + half / 2) <= arm) & (np.abs(v) <= half)) |
            ((np.abs(v - half / 2 - arm / 2) <= arm) & (np.abs(u) <= half))) & (np.abs(u) <= half)


def corpus_texture(kind, u, v, period, rng):
    """Pattern weight in [0, 1] of the secondary colour (TEXTURES)."""
    if kind == "waves":
        return (np.sin(2 * math.pi * (u + 0.3 * period * np.sin(2 * math.pi * v / (2 * period))) / period) > 0)
    if kind == "rings":
        return np.sin(2 * math.pi * np.hypot(u, v) / period) > 0
    if kind == "grid":
        return (np.abs(u % period) < 1.5) | (np.abs(v % period) < 1.5)
    if kind == "zigzag":
        return np.sin(2 * math.pi * (v + np.abs((u % period) - period / 2)) / period) > 0
    if kind == "hatch":
        return ((u + v) % period < 1.5) | ((u - v) % period < 1.5)
    if kind == "bricks":
        row = np.floor(v / period)
        return (v % period < 1.5) | ((u + row * period) % (2 * period) < 1.5)
    if kind == "rays":
        return np.sin(8 * np.arctan2(v, u)) > 0
    h, w = u.shape  # blotches: thresholded coarse noise
    coarse = rng.random((h // 6 + 2, w // 6 + 2))
    return np.kron(coarse, np.ones((6, 6)))[:h, :w] > 0.5


def render_corpus_image(rng, shape_hw):
    """One corpus image: (uint8 RGB [H, W, 3], instances, objects as in data.toy.place_objects)."""
    grid = np.mgrid[0:shape_hw[0], 0:shape_hw[1]].astype(np.float32)
    image = background(rng, grid)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]  # one shape for the image's objects, of any class

    def mask_of(class_id, u, v, extent):
        return corpus_shape_mask(shape, u, v, extent)

    classes = [int(rng.integers(1, len(CLASS_NAMES)))] * int(rng.integers(1, 3))
    instances, objects = place_objects(rng, classes, grid, mask_of, EXTENT_RANGE)
    for k, (class_id, geometry, _) in enumerate(objects):
        hue = list(HUES.values())[(class_id - 1) // len(TEXTURES)]
        secondary = family_colour(rng, hue)  # the class: its texture in its colour family
        primary = hsv_colour(rng.uniform(0, 360), rng.uniform(0.3, 0.95), rng.uniform(0.3, 0.95))
        u, v = local_coords(grid, *geometry[:3])
        texture = TEXTURES[(class_id - 1) % len(TEXTURES)]
        weight = corpus_texture(texture, u, v, rng.uniform(*PERIOD_RANGE), rng).astype(np.float32)[..., None]
        mask = instances == k + 1
        image[mask] = (primary * (1 - weight) + secondary * weight)[mask]
    image += rng.normal(0, 5, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), instances, objects


def generate_corpus(out_dir, num_images=6000, size=(72, 96), seed=0):
    """Write the corpus (VOC layout without masks, split ``train``) to ``out_dir``; image i
    draws everything from ``numpy.random.default_rng([seed, i])``.  ``corpus.json``, written
    last, records the settings (``corpus_settings``).  Returns its path."""
    out_dir = Path(out_dir)
    lo, hi = side_range(size)
    ids = [f"corpus_{i:05d}" for i in range(num_images)]
    for index, image_id in enumerate(ids):
        rng = np.random.default_rng([seed, index])
        shape_hw = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))
        image, instances, objects = render_corpus_image(rng, shape_hw)
        write_image(out_dir / "JPEGImages" / f"{image_id}.jpg", image)
        write_text(out_dir / "Annotations" / f"{image_id}.xml",
                   annotation_xml(image_id, shape_hw, instances, objects, CLASS_NAMES))
    write_text(out_dir / "ImageSets" / "Segmentation" / "train.txt", "".join(f"{i}\n" for i in ids))
    write_text(out_dir / "class_names.txt", "".join(f"{n}\n" for n in CLASS_NAMES))
    write_json(out_dir / RECORD, corpus_settings(num_images, size, seed))
    return out_dir


def corpus_settings(num_images, size, seed):
    """The record of ``generate_corpus``'s settings that ``corpus.json`` holds."""
    return {"num_images": num_images, "size": list(side_range(size)), "seed": seed, "generator": GENERATOR}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the toy run's pretraining corpus (VOC layout, no masks); "
                                                 "a folder that holds the same corpus is left as it is.")
    parser.add_argument("--out", required=True, help="output folder (becomes the dataset root)")
    parser.add_argument("--seed", type=flags.non_negative_int, default=0,
                        help="random seed; the same seed gives identical files")
    parser.add_argument("--num-images", type=flags.positive_int, default=6000,
                        help="number of images (all in the train list)")
    parser.add_argument("--image-size", type=flags.int_at_least(MIN_SIZE), default=96,
                        help="largest image side in pixels; each side is drawn from [3/4 of it, it]")
    args = parser.parse_args(argv)
    size = (max(MIN_SIZE, args.image_size * 3 // 4), args.image_size)
    wanted = corpus_settings(args.num_images, size, args.seed)
    try:
        recorded = recorded_settings(args.out, wanted, RECORD, what="corpus")
        if recorded is None:
            generate_corpus(args.out, args.num_images, size, args.seed)
    except PipelineError as exc:
        parser.exit(2, f"error: {exc}\n")
    state = "made" if recorded is None else "already there"
    print(f"pretraining corpus: {args.num_images} images of {len(CLASS_NAMES) - 1} classes in {args.out} ({state})")


if __name__ == "__main__":
    main()
