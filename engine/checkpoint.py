"""Checkpoints of the training stages: written whole or not at all, read with a check of
what they hold, and the random-number state that makes a resume exact (docs/method.md §2, §11)."""
import io
from pathlib import Path

import numpy as np
import torch

from tools.io import PipelineError, atomic_path
from tools.torch_files import read_torch_file


def save_checkpoint(path, payload):
    """torch.save through a temporary file: the checkpoint is whole or absent.

    Serialised in memory first: torch's file writer turns a full disk into an opaque
    RuntimeError, a plain write raises the OSError that atomic_path reports.
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path, expect=None, foreign=None):
    """Load a checkpoint dict; ``expect`` maps keys to required values (architecture,
    number of classes, ...) and a mismatch is a PipelineError naming the file.  A file that
    is not a checkpoint of this pipeline is an error, or with ``foreign`` the checkpoint
    ``foreign(payload, path)`` makes of it (a published code base's state dict)."""
    path = Path(path)
    payload = read_torch_file(path, "checkpoint")
    if not isinstance(payload, dict) or "model" not in payload:
        if foreign is None:
            raise PipelineError(f"{path}: not a checkpoint of this pipeline")
        payload = foreign(payload, path)
    for key, value in (expect or {}).items():
        if payload.get(key) != value:
            raise PipelineError(f"{path}: checkpoint has {key}={payload.get(key)!r}, this run needs {value!r}")
    return payload


def load_weights(model, state, path):
    """Load a checkpoint's weights (``state``) into ``model``; weights of another network
    (missing, unexpected or misshapen tensors) are a PipelineError naming ``path``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or misshapen:
        raise PipelineError(f"{path}: its weights do not fit a {type(model).__name__} ({len(missing)} missing, "
                            f"{len(unexpected)} unexpected, {len(misshapen)} of another shape, "
                            f"e.g. {(missing + unexpected + misshapen)[0]})")
    model.load_state_dict(state)


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}


def restore_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
