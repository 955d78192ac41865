"""File I/O for every stage: images, label PNGs, JSON (docs/method.md §2); the CAM files are tools/cam_files.py.

Every writer here is atomic: it writes to a temporary name in the destination folder
and renames it into place, so an output file appears whole or not at all.  Every reader
raises :class:`PipelineError` with a one-line message that names the file.
"""
import contextlib
import json
import os
import secrets
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

# Truncated files must fail loudly, not decode to a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class PipelineError(Exception):
    """A problem with the input or the environment that the user must fix.

    Stage scripts print it as one line and exit non-zero.
    """


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    The temporary name keeps the suffix so that libraries that pick a format from it work,
    and names the writing process, so that a pool that kills its workers can remove what
    they were writing (``remove_temporaries_of``).
    """
    path = Path(path)
    # a random name, not tempfile.mkstemp: its files are private (0600) and would stay so after the rename
    tmp = path.parent / f".{path.stem}.{os.getpid()}-{secrets.token_hex(8)}.tmp{path.suffix}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise PipelineError(f"{path}: cannot write ({exc.strerror or exc})") from exc
        raise


def make_dir(path):
    """Create the folder ``path`` and its parents unless they exist; returns it as a Path.  A
    file in the way (the path itself or one of its parents) is ``<file>: not a directory``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise PipelineError(f"{blocking}: not a directory") from exc
    except OSError as exc:
        raise PipelineError(f"{path}: cannot create the folder ({exc.strerror or exc})") from exc
    return path


def _remove_temporaries(folder, patterns):
    """Delete the files of ``folder`` that match any of the glob ``patterns``."""
    for pattern in patterns:
        for tmp in Path(folder).glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def remove_stale_temporaries(folder, stems=("*",)):
    """Delete temporary files that a killed run left in ``folder`` (see atomic_path): those
    of every file, or of the files named ``<stem>.*`` only."""
    _remove_temporaries(folder, [f".{stem}.*.tmp*" for stem in stems])


def remove_temporaries_of(folder, pids):
    """Delete the temporary files in ``folder`` of the processes ``pids`` (killed while they
    wrote, see atomic_path)."""
    _remove_temporaries(folder, [f".*.{pid}-*.tmp*" for pid in pids])


@contextlib.contextmanager
def _opened_image(path, kind, name):
    """The loaded PIL image of ``path``: a missing file is "<kind> file not found", any
    failure to decode it or to convert it in the ``with`` block "cannot read <name>"."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: {kind} file not found")
    try:
        with Image.open(path) as img:
            img.load()
            yield img
    except PipelineError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt files
        raise PipelineError(f"{path}: cannot read {name} ({exc})") from exc


def read_image(path):
    """Read an image file as uint8 RGB [H, W, 3].

    Grayscale, palette, CMYK, RGBA and 16-bit images are converted to 8-bit RGB.
    """
    with _opened_image(path, "image", "image") as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            peak = 65535.0 if arr.max() > 255 else 255.0
            img = Image.fromarray(np.round(arr / peak * 255).astype(np.uint8))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            canvas = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(canvas, img)
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb)


def image_size(path):
    """(H, W) of an image file, from its header."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except Exception as exc:
        raise PipelineError(f"{path}: cannot read image ({exc})") from exc


def read_label_png(path, num_classes=None):
    """Read a label map (palette or grayscale PNG) as uint8 [H, W] of class ids; with
    ``num_classes``, every value must be a class id below it or 255 (ignore / unsure)."""
    with _opened_image(path, "label", "label PNG") as img:
        if img.mode not in ("P", "L"):
            raise PipelineError(f"{path}: label PNG must be palette or grayscale, not {img.mode}")
        labels = np.array(img, dtype=np.uint8)
    if num_classes is not None:
        bad = np.unique(labels[(labels >= num_classes) & (labels != 255)])
        if bad.size:
            raise PipelineError(f"{path}: values {bad.tolist()} are neither class ids 0..{num_classes - 1} nor 255")
    return labels


def write_label_png(path, labels, palette=None):
    """Write uint8 [H, W] class ids as a PNG, with ``palette`` (768 ints) if given."""
    img = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="L")
    if palette is not None:
        img = img.convert("P")
        img.putpalette(list(palette))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def write_image(path, rgb):
    """Write uint8 RGB [H, W, 3] (format from the suffix)."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, quality=95)


def write_json(path, obj):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)
