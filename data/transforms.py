"""Image transforms for training and inference (SPEC 3).

Training: resize so that the long side is a uniform random integer in ``resize_long``
(bilinear), random horizontal flip, ImageNet normalisation, random square crop padded
with 0 (after normalisation) plus the crop's valid-pixel mask.  All randomness comes from
the ``numpy.random.Generator`` passed in, drawn in this order: long side, flip, crop
offset along y, crop offset along x.
"""
import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_array(image):
    """uint8 RGB [H, W, 3] -> float32 [H, W, 3] with ImageNet mean/std (SPEC 3)."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    return (np.asarray(image, dtype=np.float32) / 255.0 - mean) / std


def normalize(image):
    """uint8 RGB [H, W, 3] numpy -> normalised float32 tensor [3, H, W] (SPEC 3)."""
    return torch.from_numpy(np.ascontiguousarray(normalize_array(image).transpose(2, 0, 1)))


def denormalize(images):
    """Normalised tensor [N, 3, H, W] -> RGB in [0, 1] (undoes ``normalize``; SPEC 6.2)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0.0, 1.0)


def resize_long(image, long_side):
    """Bilinearly resize uint8 [H, W, 3] so that its longer side is ``long_side``."""
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    size_wh = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size_wh == (w, h):
        return image
    return np.asarray(Image.fromarray(image).resize(size_wh, Image.BILINEAR))


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
    """Training augmentation of SPEC 3; ``(image, rng) -> (image [3,S,S], valid [S,S])``."""

    def __init__(self, resize_long=(320, 640), crop_size=512, flip=True):
        lo, hi = resize_long
        if not 0 < lo <= hi:
            raise ValueError(f"resize_long must satisfy 0 < lo <= hi, got {resize_long}")
        self.resize_long = (int(lo), int(hi))
        self.crop_size = int(crop_size)
        self.flip = flip

    def __call__(self, image, rng):
        image, window = self._resize_flip(image, rng)
        pixels = apply_crop(normalize_array(image), window, self.crop_size)
        valid = apply_crop(np.ones(image.shape[:2], dtype=np.float32), window, self.crop_size)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))), torch.from_numpy(valid)

    def with_labels(self, image, labels, rng, ignore_index=255):
        """The same augmentation applied to an image and its label map (nearest resize,
        padding ``ignore_index``): ``-> (image [3,S,S], labels int64 [S,S])`` (SPEC 9)."""
        if labels.shape != image.shape[:2]:
            raise ValueError(f"label map {labels.shape} and image {image.shape[:2]} differ in size")
        image, window, flipped = self._resize_flip(image, rng, with_flip=True)
        labels = np.asarray(Image.fromarray(labels).resize(image.shape[1::-1], Image.NEAREST))
        if flipped:
            labels = labels[:, ::-1]
        pixels = apply_crop(normalize_array(image), window, self.crop_size)
        labels = apply_crop(labels, window, self.crop_size, fill=ignore_index)
        return (torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
                torch.from_numpy(labels.astype(np.int64)))

    def _resize_flip(self, image, rng, with_flip=False):
        """Resize and maybe flip ``image`` and draw its crop window, in the documented rng order."""
        image = resize_long(image, int(rng.integers(self.resize_long[0], self.resize_long[1] + 1)))
        flipped = bool(self.flip and rng.random() < 0.5)
        if flipped:
            image = image[:, ::-1]
        window = random_crop_window(image.shape[:2], self.crop_size, rng)
        return (image, window, flipped) if with_flip else (image, window)
