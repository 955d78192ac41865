"""Image transforms for training and inference (SPEC 3).

Every resize of an image is PIL's bicubic on the uint8 image, as the published loaders do
it (label maps: PIL's nearest).  Training: resize so that the long side is a uniform random
integer in ``resize_long`` (or, IRN's augmentation, by a factor uniform in ``scale_range``),
random horizontal flip, ImageNet normalisation, random square crop padded with 0 (after
normalisation) plus the crop's valid-pixel mask.  All randomness comes from the
``numpy.random.Generator`` passed in, drawn in this order: long side (or factor), flip,
crop offset along y, crop offset along x.
"""
import numpy as np
import torch
from PIL import Image

from tools.normalization import normalize, normalize_array


def resize_to(image, size_hw, resample=Image.BICUBIC):
    """PIL resize of a uint8 image (or label map) to ``(h, w)``; unchanged if already that size."""
    if tuple(size_hw) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((size_hw[1], size_hw[0]), resample))


def rescale(image, scale, resample=Image.BICUBIC):
    """PIL resize by ``scale``: the size is ``(round(h * scale), round(w * scale))``."""
    h, w = image.shape[:2]
    return resize_to(image, (max(1, round(h * scale)), max(1, round(w * scale))), resample)


def resize_long(image, long_side):
    """Resize uint8 [H, W, 3] (PIL bicubic) so that its longer side is ``long_side``."""
    return rescale(image, long_side / max(image.shape[:2]))


def scaled_images(image, scales):
    """The scales of inference (SPEC 5.9): for each scale the uint8 image resized by PIL's
    bicubic, then normalised -> [1, 3, h, w] tensors."""
    return [normalize(image if scale == 1.0 else rescale(image, scale))[None] for scale in scales]


def crop_axis(length, crop_size, rng):
    """(source start, destination start, copied length) of a random crop along one axis.

    A longer axis gives a random window; a shorter one is placed at a random offset
    inside the crop.
    """
    if length >= crop_size:
        return int(rng.integers(0, length - crop_size + 1)), 0, crop_size
    return 0, int(rng.integers(0, crop_size - length + 1)), length


def random_crop_window(shape_hw, crop_size, rng):
    """Random crop geometry of an [H, W] image: one ``crop_axis`` triple per axis (y, x)."""
    return crop_axis(shape_hw[0], crop_size, rng), crop_axis(shape_hw[1], crop_size, rng)


def apply_crop(array, window, crop_size, fill=0):
    """Crop [H, W, ...] with ``window`` into a [crop, crop, ...] array filled with ``fill``."""
    (sy, dy, ly), (sx, dx, lx) = window
    out = np.full((crop_size, crop_size) + array.shape[2:], fill, dtype=array.dtype)
    out[dy:dy + ly, dx:dx + lx] = array[sy:sy + ly, sx:sx + lx]
    return out


class TrainTransform:
    """Training augmentation of SPEC 3 and 9; ``(image, rng) -> (image [3,S,S], valid [S,S])``.

    ``scale_range`` (IRN's augmentation) replaces the long-side resize by a rescale by a
    factor uniform in that range.
    """

    def __init__(self, resize_long=(320, 640), crop_size=512, flip=True, scale_range=None):
        lo, hi = scale_range or resize_long
        if not 0 < lo <= hi:
            raise ValueError(f"resize range must satisfy 0 < lo <= hi, got {(lo, hi)}")
        self.resize_long = (int(lo), int(hi)) if scale_range is None else None
        self.scale_range = (float(lo), float(hi)) if scale_range is not None else None
        self.crop_size = int(crop_size)
        self.flip = flip

    def __call__(self, image, rng):
        image, window = self._resize_flip(image, rng)
        pixels = apply_crop(normalize_array(image), window, self.crop_size)
        valid = apply_crop(np.ones(image.shape[:2], dtype=np.float32), window, self.crop_size)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))), torch.from_numpy(valid)

    def with_labels(self, image, labels, rng, ignore_index=255):
        """The same augmentation applied to an image and its label map (PIL nearest resize,
        padding ``ignore_index``): ``-> (image [3,S,S], labels int64 [S,S])`` (SPEC 9)."""
        if labels.shape != image.shape[:2]:
            raise ValueError(f"label map {labels.shape} and image {image.shape[:2]} differ in size")
        image, window, flipped = self._resize_flip(image, rng, with_flip=True)
        labels = resize_to(labels, image.shape[:2], Image.NEAREST)
        if flipped:
            labels = labels[:, ::-1]
        pixels = apply_crop(normalize_array(image), window, self.crop_size)
        labels = apply_crop(labels, window, self.crop_size, fill=ignore_index)
        return (torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
                torch.from_numpy(labels.astype(np.int64)))

    def _resize_flip(self, image, rng, with_flip=False):
        """Resize and maybe flip ``image`` and draw its crop window, in the documented rng order."""
        if self.scale_range is None:
            image = resize_long(image, int(rng.integers(self.resize_long[0], self.resize_long[1] + 1)))
        else:
            image = rescale(image, float(rng.uniform(*self.scale_range)))
        flipped = bool(self.flip and rng.random() < 0.5)
        if flipped:
            image = image[:, ::-1]
        window = random_crop_window(image.shape[:2], self.crop_size, rng)
        return (image, window, flipped) if with_flip else (image, window)
