"""CAM files (docs/method.md §2): the dict of keys and maps that make_cam writes and every later stage
reads, in the layouts written now (make_cam's scale maps, uint8 full-size maps) and before
(format 1: float16 arrays), and the CAM files of SIPE, AE-SIPE, IRN and PSA
(docs/published-cam-files.md).  Writers are atomic and readers raise ``PipelineError`` naming
the file, as in tools/io.py."""
import bz2
import zlib
from pathlib import Path

import numpy as np
import torch

from tools.cam_maps import ScaleMaps
from tools.io import PipelineError, atomic_path

CAM_FORMAT = 2  # a dict of encoded maps: make_cam's scales, or uint8 full-size maps (format 1: float16 arrays)


def encode_map(values):
    """A [K,H,W] map in [lo, hi] (lo <= 0, hi >= 1: the grid of [0, 1] maps is fixed) as
    uint8 steps of the square root of (value - lo) / (hi - lo), differenced along the rows
    and then down the columns (mod 256) and compressed with bzip2 (docs/method.md §2).  The square root keeps the
    order of the small values that decide the argmax over the background of IS-CAM's empty
    regions (a linear grid's 1/255 ties them); the differences of a bilinearly upsampled
    map are nearly constant, so smooth maps and empty channels compress to a small part of a
    byte a value (bzip2 level 9: 12 % smaller than zlib level 6 on make_cam's maps at 600 px,
    as fast to write; bench/cam_files.py)."""
    values = np.asarray(values, dtype=np.float32)
    lo, hi = min(0.0, float(values.min(initial=0.0))), max(1.0, float(values.max(initial=1.0)))
    steps = np.rint(np.sqrt((values - lo) / (hi - lo)) * 255.0).astype(np.uint8)
    deltas = np.diff(steps, axis=-1, prepend=np.zeros_like(steps[..., :1]))
    deltas = np.diff(deltas, axis=-2, prepend=np.zeros_like(deltas[..., :1, :]))
    return {"codec": "bz2", "range": (lo, hi), "shape": steps.shape, "data": bz2.compress(deltas.tobytes(), 9)}


def encode_scales(maps):
    """A ``ScaleMaps`` as it is stored: the float32 map of each scale, zlib-compressed, the
    image size and whether the background is to be prepended; ``fuse_scales`` on load gives
    the map make_cam computed, bit for bit.  At stride 16 the scales hold about 3 % of the
    image's pixels: 0.19 bytes per class channel and pixel for the three maps of an
    ``--all-maps`` file (docs/cam-files.md)."""
    return {"codec": "scales", "size": tuple(int(side) for side in maps.size), "background": bool(maps.background),
            "scales": [{"shape": value.shape, "data": zlib.compress(value.tobytes(), 6)}
                       for value in maps.numpy().scales]}


def _decode_scales(encoded):
    scales = [torch.frombuffer(bytearray(zlib.decompress(value["data"])), dtype=torch.float32).reshape(value["shape"])
              for value in encoded["scales"]]
    if not scales or any(value.ndim != 3 or len(value) != len(scales[0]) for value in scales):
        raise ValueError("its scales do not hold the same channels")
    return ScaleMaps(scales, tuple(encoded["size"]), encoded["background"]).fused().numpy()


def decode_map(encoded):
    """The float32 [K,H,W] map of ``encode_scales`` (exact) or ``encode_map`` (an error of at
    most (hi - lo) / 255, falling to (hi - lo) / 260,000 at lo)."""
    if encoded.get("codec") == "scales":
        return _decode_scales(encoded)
    if encoded.get("codec") != "bz2":
        raise ValueError(f"unknown codec {encoded.get('codec')!r}")
    lo, hi = encoded["range"]
    deltas = np.frombuffer(bz2.decompress(encoded["data"]), dtype=np.uint8).reshape(encoded["shape"])
    # uint8 sums wrap mod 256: they undo the differences exactly
    steps = np.cumsum(np.cumsum(deltas, axis=-2, dtype=np.uint8), axis=-1, dtype=np.uint8)
    return np.square(steps.astype(np.float32) / np.float32(255.0)) * np.float32(hi - lo) + np.float32(lo)


def _finite(maps):
    values = maps.scales if isinstance(maps, ScaleMaps) else [maps]
    return all(bool(torch.isfinite(torch.as_tensor(value)).all()) for value in values)


def save_cam(path, keys, cam, method=None, num_classes=None, made_by=None, **maps):
    """Write a CAM dict (docs/method.md §2): ``keys`` int64[K], the map ``cam`` [K,H,W] plus extra maps,
    each a ``ScaleMaps`` (make_cam's: ``encode_scales``) or an array (``encode_map``), and,
    when given, the method and the dataset's number of classes that made it and the digest
    of its folder's provenance record (``made_by``; all three checked by load_cam).  A map
    with NaN or infinite values is not saved."""
    maps = {name: value if isinstance(value, ScaleMaps) else np.asarray(value, dtype=np.float32)
            for name, value in {"cam": cam, **maps}.items()}
    bad = [name for name, value in maps.items() if not _finite(value)]
    if bad:
        raise PipelineError(f"{path}: maps {bad} are not finite (NaN or infinite); not saved")
    record = {"format": CAM_FORMAT, "keys": np.asarray(keys, dtype=np.int64),
              "maps": {name: encode_scales(value) if isinstance(value, ScaleMaps) else encode_map(value)
                       for name, value in maps.items()}}
    record.update({name: value for name, value in (("method", method), ("num_classes", num_classes),
                                                   ("made_by", made_by)) if value is not None})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, record, allow_pickle=True)


def _cam_record(path):
    """The dict of a CAM file; a missing or foreign file is a PipelineError."""
    if not Path(path).is_file():
        raise PipelineError(f"{path}: CAM file not found")
    try:
        record = np.load(path, allow_pickle=True).item()
    except Exception as exc:
        raise PipelineError(f"{path}: not a CAM file ({exc})") from exc
    if not isinstance(record, dict):
        raise PipelineError(f"{path}: not a CAM file (holds a {type(record).__name__}, not a dict)")
    return record


def _keys(path, record):
    try:
        return np.asarray(record["keys"], dtype=np.int64)
    except Exception as exc:
        raise PipelineError(f"{path}: not a CAM file of this pipeline, SIPE, AE-SIPE, IRN or PSA ({exc!r})") from exc


def _cam_maps(record):
    """{name: the stored map} of a CAM dict: encoded (format 2) or float16 arrays (format 1)."""
    if record.get("format") == CAM_FORMAT:
        return record["maps"]
    return {k: v for k, v in record.items() if k != "keys" and isinstance(v, np.ndarray)}


# The CAM files of the published code bases (docs/published-cam-files.md): SIPE's and AE-SIPE's
# {"keys": background 0 then 1-based classes, "IS_CAM": [K, H, W] with the background first},
# IRN's {"keys": 0-based classes, "cam": stride-4 maps, "high_res": [K, H, W] without background},
# PSA's {0-based class: [H, W] map}; their own map names, besides ``cam``
PUBLISHED_MAPS = {"sipe": ("IS_CAM",), "irn": ("high_res", "plain_cam"), "psa": ("plain_cam",)}


def published_format(record):
    """``sipe`` (SIPE and AE-SIPE), ``irn`` or ``psa`` for a CAM dict of those code bases,
    recognised by its content; None for this pipeline's and anything else."""
    if "format" in record:
        return None
    if {"keys", "IS_CAM"} <= record.keys():
        return "sipe"
    if {"keys", "high_res"} <= record.keys():
        return "irn"
    if record and all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in record) \
            and all(np.ndim(v) == 2 for v in record.values()):
        return "psa"
    return None


def _published_cam(path, record, kind, map_name):
    """(keys int64[K], map float32[K, H, W]) of a published CAM dict, in this pipeline's
    convention: background 0 first, classes 1-based; IRN's and PSA's maps, which have no
    background, get ``1 - max`` of their classes as this pipeline's plain CAM."""
    if map_name not in ("cam", *PUBLISHED_MAPS[kind]):
        raise PipelineError(f"{path}: {kind.upper()}'s CAM file has one map (read it as 'cam' or "
                            f"{' / '.join(repr(m) for m in PUBLISHED_MAPS[kind])}), not {map_name!r}")
    try:
        if kind == "psa":
            classes = np.asarray(sorted(int(k) for k in record), dtype=np.int64)
            maps = np.stack([np.asarray(record[c], dtype=np.float32) for c in sorted(record)])
        else:
            classes = _keys(path, record)
            maps = np.asarray(record["IS_CAM" if kind == "sipe" else "high_res"], dtype=np.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise PipelineError(f"{path}: {kind.upper()}'s CAM file cannot be read ({exc})") from exc
    if maps.ndim != 3 or len(maps) != len(classes):
        raise PipelineError(f"{path}: {kind.upper()}'s map has shape {maps.shape} for keys {classes.tolist()}, "
                            f"expected [{len(classes)}, H, W]")
    if kind == "sipe":
        if classes.size == 0 or classes[0] != 0:
            raise PipelineError(f"{path}: keys {classes.tolist()} lack SIPE's background 0 before its 1-based classes")
        return classes, maps
    if classes.size and classes.min() < 0:
        raise PipelineError(f"{path}: {kind.upper()}'s 0-based classes {classes.tolist()} hold a negative id")
    background = 1 - maps.max(axis=0, initial=0.0)[None]
    return np.concatenate([[0], classes + 1]), np.concatenate([background, maps]).astype(np.float32)


def cam_method(path):
    """The method recorded in a CAM file (``cam``, ``sipe``, ``ae_sipe``), or None."""
    return _cam_record(path).get("method")


def load_cam(path, map_name="cam", num_classes=None, size=None, made_by=None, classes=None):
    """Read a CAM dict, of this format or of format 1 (float16 arrays), or of SIPE, AE-SIPE,
    IRN or PSA (``published_format``); returns (keys int64[K], map float32[K,H,W]).  With
    ``num_classes``, a CAM that records another number of classes (made on another dataset)
    is an error, and with the image's ``size`` (H, W) too, so are keys that are not 0
    followed by sorted class ids below ``num_classes`` and a map of another size (docs/method.md §2).
    With the image's ``classes`` (its 1-based labels), a published file whose classes, read
    in its convention, are not those is an error.  A map with NaN or infinite values is an
    error, and with ``made_by`` (its folder's record digest) so is a file that another run
    made.  ``plain_cam`` of a plain CAM classifier's file (method ``cam``) is its final map,
    so that the CAM row of every route reads ``plain_cam``."""
    path = Path(path)
    record = _cam_record(path)
    kind = published_format(record)
    if kind is not None:
        keys, cam = _published_cam(path, record, kind, map_name)
        if classes is not None and not np.array_equal(keys[1:], np.asarray(classes, dtype=np.int64)):
            raise PipelineError(f"{path}: its classes {keys[1:].tolist()} (read as {kind.upper()}'s "
                                f"{'1-based keys after the background' if kind == 'sipe' else '0-based classes'}) "
                                f"are not the image's labels {np.asarray(classes).tolist()}")
    else:
        keys, cam = _own_cam(path, record, map_name, num_classes, made_by)
    if cam.ndim != 3 or cam.shape[0] != len(keys):
        raise PipelineError(f"{path}: map {map_name!r} has shape {cam.shape}, expected [{len(keys)}, H, W]")
    if not np.isfinite(cam).all():
        raise PipelineError(f"{path}: map {map_name!r} is not finite (it holds NaN or infinite values)")
    if num_classes is not None and size is not None:
        _check_cam(path, keys, cam, num_classes, size)
    return keys, cam


def _own_cam(path, record, map_name, num_classes, made_by):
    keys = _keys(path, record)
    if num_classes is not None and record.get("num_classes", num_classes) != num_classes:
        raise PipelineError(f"{path}: CAM made for a dataset of {record['num_classes']} classes, this dataset "
                            f"has {num_classes}")
    if made_by is not None and record.get("made_by") != made_by:
        raise PipelineError(f"{path}: made by another run than the rest of its folder (its made_by "
                            f"{record.get('made_by')}, the folder's made_by.json {made_by}); make the CAMs again")
    maps = _cam_maps(record)
    if map_name == "plain_cam" and record.get("method") == "cam":
        map_name = "cam"
    if map_name not in maps:
        hint = ("a plain CAM classifier's file (method cam) has no prototype maps" if record.get("method") == "cam"
                else "make_cam.py --all-maps writes the intermediate maps")
        raise PipelineError(f"{path}: no map {map_name!r} (has {sorted(maps)}; {hint})")
    try:
        stored = maps[map_name]
        cam = decode_map(stored) if isinstance(stored, dict) else np.asarray(stored, dtype=np.float32)
    except (KeyError, TypeError, ValueError, RuntimeError, OSError, EOFError, zlib.error) as exc:  # bz2: OSError, EOF
        raise PipelineError(f"{path}: map {map_name!r} cannot be decoded ({exc})") from exc
    return keys, cam


def _check_cam(path, keys, cam, num_classes, size):
    if keys.size == 0 or keys[0] != 0 or keys.max() >= num_classes or np.any(np.diff(keys) <= 0):
        raise PipelineError(f"{path}: keys {keys.tolist()} are not 0 followed by sorted class ids < {num_classes}")
    if cam.shape[1:] != tuple(size):
        raise PipelineError(f"{path}: map size {cam.shape[1:]} differs from its image {tuple(size)}")
