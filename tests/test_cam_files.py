"""CAM files (tools/cam_files.py, docs/method.md §2): make_cam's maps of each scale, fused on load; maps given at
the image size as uint8, differenced and bzip2-compressed; format-1 files (float16) still read."""
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.cam_files import make_cam_like
from tools.cam_maps import ScaleMaps
from tools.cam_files import decode_map, encode_map, load_cam, save_cam
from tools.io import PipelineError


def test_a_map_comes_back_within_a_step_and_finer_near_zero():
    rng = np.random.default_rng(0)
    values = rng.random((3, 37, 53)).astype(np.float32)
    values[0, :4] = 0.0
    values[1, 5] = 1.0
    values[2, :3] = rng.random((3, 53)) * 1e-3
    decoded = decode_map(encode_map(values))
    assert decoded.dtype == np.float32 and decoded.shape == values.shape
    assert np.abs(decoded - values).max() <= 1 / 255 + 1e-7
    small, error = values[2, :3], np.abs(decoded[2, :3] - values[2, :3])
    assert np.all(error <= np.sqrt(small) / 255 + (0.5 / 255) ** 2 + 1e-8)  # the square root's grid
    assert np.all(decoded[0, :4] == 0.0) and np.all(decoded[1, 5] == 1.0)  # the ends of [0, 1] are exact


def test_values_beyond_0_1_widen_the_range_and_keep_the_step():
    values = np.linspace(-2.0, 3.0, 2 * 9 * 11, dtype=np.float32).reshape(2, 9, 11)
    encoded = encode_map(values)
    assert encoded["range"] == (-2.0, 3.0)
    assert np.abs(decode_map(encoded) - values).max() <= 5.0 / 255 + 1e-6


def test_the_argmax_of_cam_like_maps_survives():
    for value in make_cam_like(120, 160, 3, seed=1).values():
        value = value.fused().numpy()
        decoded = decode_map(encode_map(value))
        ordered = np.sort(value, axis=0)
        clear = ordered[-1] - ordered[-2] > 2 / 255  # pixels whose top two channels are two steps apart
        assert np.array_equal(decoded.argmax(0)[clear], value.argmax(0)[clear])
        assert np.mean(decoded.argmax(0) == value.argmax(0)) > 0.999


def test_scales_fuse_as_the_spec_says():
    """docs/method.md §5.9: each scale resized to the image (bilinear, align_corners=False), summed, each
    channel over its max + 1e-5; the plain CAM's background 1 - max of the foreground."""
    rng = np.random.default_rng(4)
    scales = [torch.from_numpy(rng.random((2, h, w), dtype=np.float32)) for h, w in ((3, 4), (2, 2), (5, 6))]
    total = sum(F.interpolate(s[None].double(), (30, 41), mode="bilinear", align_corners=False)[0] for s in scales)
    expected = total / (total.amax(dim=(1, 2), keepdim=True) + 1e-5)
    torch.testing.assert_close(ScaleMaps(scales, (30, 41)).fused().double(), expected, rtol=1e-6, atol=1e-6)
    with_bg = ScaleMaps(scales, (30, 41), background=True).fused().double()
    torch.testing.assert_close(with_bg[1:], expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(with_bg[0], 1 - expected.amax(dim=0), rtol=1e-6, atol=1e-6)


def test_make_cams_scales_come_back_exactly(tmp_path):
    """A file of make_cam's ScaleMaps loads as the maps fused in memory, bit for bit, and the
    image's size, keys and every map are kept."""
    maps = make_cam_like(75, 98, 2, seed=3)
    path = tmp_path / "a.npy"
    save_cam(path, [0, 4, 7], maps["cam"], plain_cam=maps["plain_cam"], is_cam=maps["is_cam"])
    for name, stored in (("cam", "cam"), ("plain_cam", "plain_cam"), ("is_cam", "is_cam")):
        keys, loaded = load_cam(path, name, num_classes=8, size=(75, 98))
        assert keys.tolist() == [0, 4, 7] and loaded.dtype == np.float32 and loaded.shape == (3, 75, 98)
        assert np.array_equal(loaded, maps[stored].fused().numpy()), name


def test_an_all_maps_file_at_coco_size_is_small(tmp_path):
    """At most 0.3 bytes per class channel and pixel (the three maps of an --all-maps
    file together), on make_cam-like maps at 640x480 (bench/cam_files.py prints more cases)."""
    for classes in (1, 3):
        maps = make_cam_like(480, 640, classes, seed=2)
        path = tmp_path / f"{classes}.npy"
        save_cam(path, np.arange(classes + 1), maps.pop("cam"), **maps)
        assert path.stat().st_size / ((classes + 1) * 480 * 640) <= 0.3


def test_a_scale_map_that_is_not_finite_is_not_saved(tmp_path):
    maps = make_cam_like(40, 50, 1, seed=0)
    maps["is_cam"].scales[2][0, 1, 1] = float("nan")
    with pytest.raises(PipelineError, match=r"a.npy: maps \['is_cam'\] are not finite"):
        save_cam(tmp_path / "a.npy", [0, 1], maps["cam"], is_cam=maps["is_cam"])
    assert not (tmp_path / "a.npy").exists()


def test_format_1_files_are_read(tmp_path):
    cam = np.random.default_rng(3).random((2, 6, 7)).astype(np.float16)
    path = tmp_path / "old.npy"
    np.save(path, {"keys": np.array([0, 4]), "cam": cam, "is_cam": cam[::-1], "method": "sipe"}, allow_pickle=True)
    keys, loaded = load_cam(path, "is_cam")
    assert keys.tolist() == [0, 4] and loaded.dtype == np.float32 and np.array_equal(loaded, cam[::-1])


@pytest.mark.parametrize("damage", ["truncated", "truncated scale", "unequal scales", "no scales"])
def test_a_damaged_map_is_named(tmp_path, damage):
    path = tmp_path / "a.npy"
    if damage == "truncated":
        save_cam(path, [0, 2], np.zeros((2, 5, 5)))
    else:
        save_cam(path, [0, 2], make_cam_like(20, 30, 1, seed=0)["cam"])
    record = np.load(path, allow_pickle=True).item()
    stored = record["maps"]["cam"]
    if damage == "truncated":
        stored["data"] = stored["data"][:-3]
    elif damage == "truncated scale":
        stored["scales"][0]["data"] = stored["scales"][0]["data"][:-3]
    elif damage == "unequal scales":
        stored["scales"][1] = {"shape": (1, 1, 1), "data": zlib.compress(np.zeros(1, np.float32).tobytes())}
    else:
        stored["scales"] = []
    np.save(path, record, allow_pickle=True)
    with pytest.raises(PipelineError, match=r"a.npy: map 'cam' cannot be decoded"):
        load_cam(path)
