"""Reading torch files (checkpoints, backbone weights) with one-line errors.  Apart from
tools/io.py so that the image and label I/O does not import torch."""
from pathlib import Path

import torch

from tools.io import PipelineError


def read_torch_file(path, what, not_found=None):
    """``torch.load`` of a file onto the CPU: a missing file is "<what> not found" (or
    ``not_found``), one torch cannot read "cannot read <what>", both naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: {not_found or what + ' not found'}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise PipelineError(f"{path}: cannot read {what} ({exc})") from exc
