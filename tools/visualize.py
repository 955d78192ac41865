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


def overlay(image, labels):
    """A label map's palette colours blended over its image."""
    return blend(image, label_colours(labels), 0.6)


def label_panel(image, *label_maps):
    """The image, then each label map blended over it, side by side."""
    return np.concatenate([image] + [overlay(image, m) for m in label_maps], axis=1)


def thumbnail(rgb, height):
    """uint8 RGB resized (bilinear) to ``height`` rows, its aspect kept."""
    from PIL import Image

    h, w = rgb.shape[:2]
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))


def labelled_grid(titles, rows, height=96, gap=4, title_height=16):
    """A grid of pictures for a figure: one column per title (drawn above it), one row per
    list of ``rows``; a cell is uint8 RGB [H, W, 3] or None (left grey).  Every cell is scaled
    to ``height`` rows; a column is as wide as its widest cell."""
    from PIL import Image, ImageDraw

    cells = [[None if cell is None else thumbnail(cell, height) for cell in row] for row in rows]
    widths = [max([cell.shape[1] for row in cells for cell in row[c:c + 1] if cell is not None], default=height)
              for c in range(len(titles))]
    width = sum(widths) + gap * (len(titles) + 1)
    figure = np.full((title_height + (height + gap) * len(rows) + gap, width, 3), 255, np.uint8)
    for r, row in enumerate(cells):
        top = title_height + gap + r * (height + gap)
        left = gap
        for c, cell in enumerate(row):
            if cell is None:
                figure[top:top + height, left:left + widths[c]] = 230
            else:
                figure[top:top + height, left:left + cell.shape[1]] = cell
            left += widths[c] + gap
    picture = Image.fromarray(figure)
    draw = ImageDraw.Draw(picture)
    left = gap
    for title, column_width in zip(titles, widths):
        draw.text((left, 2), title, fill=(0, 0, 0))
        left += column_width + gap
    return np.asarray(picture)
