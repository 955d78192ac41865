"""CAM files (tools/io.py, SPEC 2): uint8 maps, differenced and bzip2-compressed; format-1 files
(float16) still read."""
import numpy as np
import pytest

from bench.cam_files import make_cam_like
from tools.io import PipelineError, decode_map, encode_map, load_cam, save_cam


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
    maps = make_cam_like(120, 160, 3, seed=1)
    for value in maps.values():
        decoded = decode_map(encode_map(value))
        ordered = np.sort(value, axis=0)
        clear = ordered[-1] - ordered[-2] > 2 / 255  # pixels whose top two channels are two steps apart
        assert np.array_equal(decoded.argmax(0)[clear], value.argmax(0)[clear])
        assert np.mean(decoded.argmax(0) == value.argmax(0)) > 0.999


def test_an_all_maps_file_at_coco_size_is_small(tmp_path):
    """The 0.3 bytes per class channel and pixel of issue 21, on make_cam-like maps at 640x480
    (bench/cam_files.py prints the same for more cases)."""
    for classes in (1, 3):
        maps = make_cam_like(480, 640, classes, seed=2)
        path = tmp_path / f"{classes}.npy"
        save_cam(path, np.arange(classes + 1), maps.pop("cam"), **maps)
        assert path.stat().st_size / ((classes + 1) * 480 * 640) <= 0.3


def test_format_1_files_are_read(tmp_path):
    cam = np.random.default_rng(3).random((2, 6, 7)).astype(np.float16)
    path = tmp_path / "old.npy"
    np.save(path, {"keys": np.array([0, 4]), "cam": cam, "is_cam": cam[::-1], "method": "sipe"}, allow_pickle=True)
    keys, loaded = load_cam(path, "is_cam")
    assert keys.tolist() == [0, 4] and loaded.dtype == np.float32 and np.array_equal(loaded, cam[::-1])


def test_a_damaged_map_is_named(tmp_path):
    path = tmp_path / "a.npy"
    save_cam(path, [0, 2], np.zeros((2, 5, 5)))
    record = np.load(path, allow_pickle=True).item()
    record["maps"]["cam"]["data"] = record["maps"]["cam"]["data"][:-3]
    np.save(path, record, allow_pickle=True)
    with pytest.raises(PipelineError, match=r"a.npy: map 'cam' cannot be decoded"):
        load_cam(path)
