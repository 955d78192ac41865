"""Image transforms for training and inference (docs/method.md §3).

Every resize of an image is PIL's bicubic on the uint8 image, as the published loaders do
it (label maps: PIL's nearest).  Training: resize so that the long side is a uniform random
integer in ``resize_long`` (or, IRN's augmentation, by a factor uniform in ``scale_range``; or
not at all), random horizontal flip, PSA's colour jitter of the image (when asked), ImageNet
normalisation, random square crop padded with 0 (after normalisation) plus the crop's
valid-pixel mask.  All randomness comes from the ``numpy.random.Generator`` passed in, drawn
in this order: long side (or factor), flip, jitter (order, then factors), crop offset along
y, crop offset along x.
"""
import numpy as np
import torch
import torchvision.transforms.functional as TF
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


# make_cam's largest side (pixels): an image whose longer side is above it is seen at this side,
# its maps resized back to the image; VOC (500 px) and COCO (640 px) images are below it
LARGEST_CAM_SIDE = 1024


def capped_scales(size, scales, largest_side=None):
    """The scales of inference of an image of ``size`` (H, W): ``scales`` as given, or, when
    its longer side is above ``largest_side``, each times ``largest_side / longer side``:
    the image is seen as if its longer side were ``largest_side`` (memory stays bounded)."""
    longer = max(size)
    if largest_side is None or longer <= largest_side:
        return list(scales)
    return [scale * largest_side / longer for scale in scales]


def scaled_images(image, scales):
    """The scales of inference (docs/method.md §5.9): for each scale the uint8 image resized by PIL's
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


class RandomResize:
    """Resize the image (PIL bicubic) and its label map (PIL nearest): the long side to a
    uniform random integer in ``long_side``, or, IRN's augmentation, by a factor uniform in
    ``scale_range``.  Draws one number."""

    def __init__(self, long_side=None, scale_range=None):
        lo, hi = scale_range or long_side
        if not 0 < lo <= hi:
            raise ValueError(f"resize range must satisfy 0 < lo <= hi, got {(lo, hi)}")
        self.long_side = (int(lo), int(hi)) if scale_range is None else None
        self.scale_range = (float(lo), float(hi)) if scale_range is not None else None

    def __call__(self, image, labels, rng):
        if self.scale_range is None:
            image = resize_long(image, int(rng.integers(self.long_side[0], self.long_side[1] + 1)))
        else:
            image = rescale(image, float(rng.uniform(*self.scale_range)))
        return image, None if labels is None else resize_to(labels, image.shape[:2], Image.NEAREST)


class RandomFlip:
    """Flip image and label map left-right with probability 1/2 (draws one number)."""

    def __call__(self, image, labels, rng):
        if rng.random() < 0.5:
            return image[:, ::-1], None if labels is None else labels[:, ::-1]
        return image, labels


class ColorJitter:
    """Random brightness, contrast and saturation factors uniform in ``[1 - x, 1 + x]`` and a
    hue shift uniform in ``[-h, h]``, applied in a random order to the image only, through
    torchvision's functional ops on the PIL image: what torchvision's ``ColorJitter`` does,
    with the randomness of ``rng`` (docs/method.md §5.10, §9).  Draws the order, then four numbers."""

    def __init__(self, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1):
        if min(brightness, contrast, saturation, hue) < 0 or hue > 0.5:
            raise ValueError(f"colour jitter needs strengths >= 0 and hue <= 0.5, got "
                             f"{(brightness, contrast, saturation, hue)}")
        self.ranges = [(TF.adjust_brightness, max(0.0, 1 - brightness), 1 + brightness),
                       (TF.adjust_contrast, max(0.0, 1 - contrast), 1 + contrast),
                       (TF.adjust_saturation, max(0.0, 1 - saturation), 1 + saturation),
                       (TF.adjust_hue, -hue, hue)]

    def __call__(self, image, labels, rng):
        order = rng.permutation(len(self.ranges))
        factors = [float(rng.uniform(lo, hi)) for _, lo, hi in self.ranges]
        picture = Image.fromarray(np.ascontiguousarray(image))
        for index in order:
            adjust, lo, hi = self.ranges[index]
            if lo < hi:  # a strength of 0 leaves that property alone, as torchvision's
                picture = adjust(picture, factors[index])
        return np.asarray(picture), labels


class NormalizeCrop:
    """ImageNet normalisation, then a random square crop (draws y, then x) padded with 0;
    the label map is cropped with it, padded with ``ignore_index`` -> int64 labels, and
    without one the crop's valid-pixel mask is the target -> float32 [S, S]."""

    def __init__(self, crop_size, ignore_index=255):
        self.crop_size, self.ignore_index = int(crop_size), ignore_index

    def __call__(self, image, labels, rng):
        window = random_crop_window(image.shape[:2], self.crop_size, rng)
        pixels = apply_crop(normalize_array(image), window, self.crop_size)
        if labels is None:
            target = torch.from_numpy(apply_crop(np.ones(image.shape[:2], dtype=np.float32), window, self.crop_size))
        else:
            target = torch.from_numpy(apply_crop(labels, window, self.crop_size, self.ignore_index).astype(np.int64))
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))), target


class TrainTransform:
    """Training augmentation of docs/method.md §3, §5.10 and §9: the joint ``(image, labels, rng)`` steps
    resize, flip (``flip``), colour jitter (``color_jitter``: brightness, contrast,
    saturation, hue; the image only), normalise and crop, composed.  ``(image, rng) ->
    (image [3,S,S], valid [S,S])``; ``with_labels(image, labels, rng) -> (image, labels
    int64 [S,S])``.  ``scale_range`` (IRN's augmentation) replaces the long-side resize by
    a rescale by a factor uniform in that range; with neither (``resize_long`` None) the
    image keeps its size (PSA's AffinityNet).  The stages take every value from their
    recipe (tools/recipes.py).
    """

    def __init__(self, resize_long, crop_size, flip=True, scale_range=None, color_jitter=None):
        resize = [RandomResize(resize_long, scale_range)] if scale_range or resize_long else []
        self.steps = resize + ([RandomFlip()] if flip else []) + \
            ([ColorJitter(*color_jitter)] if color_jitter and any(color_jitter) else []) + [NormalizeCrop(crop_size)]

    def __call__(self, image, rng):
        return self._apply(image, None, rng)

    def with_labels(self, image, labels, rng):
        """The same augmentation applied to an image and its label map (docs/method.md §9)."""
        if labels.shape != image.shape[:2]:
            raise ValueError(f"label map {labels.shape} and image {image.shape[:2]} differ in size")
        return self._apply(image, labels, rng)

    def _apply(self, image, labels, rng):
        for step in self.steps:
            image, labels = step(image, labels, rng)
        return image, labels
