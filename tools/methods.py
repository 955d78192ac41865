"""The defaults that depend on the method that made the CAMs (docs/method.md §6.4, §8; their values:
tools/recipes.py, FROM_INPUTS).

The stages that read CAM files take them from the method each file records, so the
drivers pass none of them:

- ``bg_scale``: the factor on the background of the final map (``cam``) when it is
  scored (eval_cam) or turned into labels (make_seg_labels --no-affinity): AE-SIPE's
  AE-IS-CAM is scored with its background times 0.8 (docs/method.md §6.4); the other maps keep 1.0.
- ``bg_conf_scale``: the factor on the background of stage 4's second label CRF (docs/method.md §8,
  ``tools.confident_labels.confident_labels``): with the background made smaller, the
  pixels that this CRF still calls background are the confident background (the first
  CRF, background as is, gives the confident foreground): 0.5 for SIPE, 0.8 for AE-SIPE.
  PSA's plain CAM (``cam``) is meant for stage 4's ``--mode psa``, which has no such
  factor; in the default mode it takes SIPE's 0.5.
"""
from tools.cam_files import cam_method
from tools.io import PipelineError
from tools.recipes import FROM_INPUTS

METHOD_DEFAULTS = FROM_INPUTS["cam_method"]


# CAM files that record no method (written by other code) get SIPE's values, the published defaults
UNRECORDED = "sipe"


def method_default(setting, cam_path, map_name="cam"):
    """The default ``setting`` for the CAM file ``cam_path``: its method's value (SIPE's when
    it records none), or 1.0 for ``bg_scale`` of a map other than the final ``cam``."""
    if setting == "bg_scale" and map_name != "cam":
        return 1.0
    method = cam_method(cam_path) or UNRECORDED
    if method not in METHOD_DEFAULTS:
        raise PipelineError(f"{cam_path}: the CAM records a method this pipeline does not know ({method!r}); "
                            f"pass --{setting.replace('_', '-')}")
    return METHOD_DEFAULTS[method][setting]
