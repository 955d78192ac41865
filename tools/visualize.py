"""Pictures for a person to look at: CAM heat maps and colour label maps over the image."""
import numpy as np

from tools.palette import voc_palette


def heat_colours(values):
    """[H, W] in [0, 1] -> uint8 RGB [H, W, 3] on a blue-green-yellow-red ramp."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0, 1)
    red = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def blend(image, overlay, weight=0.5):
    return (image.astype(np.float32) * (1 - weight) + overlay.astype(np.float32) * weight).astype(np.uint8)


def cam_panel(image, cam):
    """The image, then one heat-map overlay per channel of ``cam`` [K, H, W] (background
    first, then the image's classes in key order), side by side."""
    return np.concatenate([image] + [blend(image, heat_colours(channel)) for channel in cam], axis=1)


def label_colours(labels):
    """uint8 [H, W] class ids -> uint8 RGB with the VOC palette (255 drawn in its cream)."""
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return palette[np.asarray(labels, dtype=np.uint8)]


def label_panel(image, *label_maps):
    """The image, then each label map blended over it, side by side."""
    return np.concatenate([image] + [blend(image, label_colours(m), 0.6) for m in label_maps], axis=1)
