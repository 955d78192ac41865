"""The method-dependent defaults (tools/methods.py) read from the CAM files."""
import numpy as np
import pytest

from tools.cam_files import save_cam
from tools.io import PipelineError
from tools.methods import METHOD_DEFAULTS, method_default


@pytest.mark.parametrize("method, bg_scale, bg_conf_scale", [("sipe", 1.0, 0.5), ("ae_sipe", 0.8, 0.8),
                                                             ("cam", 1.0, 0.5)])
def test_defaults_follow_the_method_the_cam_records(tmp_path, method, bg_scale, bg_conf_scale):
    path = tmp_path / "a.npy"
    save_cam(path, [0, 2], np.zeros((2, 4, 5)), method=method, num_classes=3)
    assert method_default("bg_scale", path) == bg_scale == METHOD_DEFAULTS[method]["bg_scale"]
    assert method_default("bg_conf_scale", path) == bg_conf_scale
    assert method_default("bg_scale", path, map_name="is_cam") == 1.0  # only the final map is rescaled


def test_a_cam_without_a_method_gets_sipe_values_and_an_unknown_one_is_an_error(tmp_path):
    path = tmp_path / "a.npy"
    save_cam(path, [0, 2], np.zeros((2, 4, 5)))
    assert method_default("bg_scale", path) == 1.0 and method_default("bg_conf_scale", path) == 0.5
    save_cam(path, [0, 2], np.zeros((2, 4, 5)), method="cam_v9")
    with pytest.raises(PipelineError, match=rf"{path}: the CAM records a method .*'cam_v9'.*pass --bg-conf-scale"):
        method_default("bg_conf_scale", path)
