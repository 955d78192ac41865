"""Training-loop pieces shared by the training stages: order of samples, schedule, checkpoints."""
from pathlib import Path

import numpy as np
import torch

from tools.io import PipelineError, atomic_path


def epoch_batches(num_samples, batch_size, seed, epoch, rank=0, world_size=1):
    """The batches of one epoch for this rank: a permutation fixed by (seed, epoch), last
    incomplete batch dropped, each global batch split evenly between the ranks.

    Depends on nothing else, so a resumed run sees the same batches as an unbroken one.
    """
    if batch_size % world_size:
        raise PipelineError(f"--batch-size {batch_size} is not divisible by the {world_size} processes")
    if num_samples < batch_size:
        raise PipelineError(f"the split has {num_samples} images, fewer than one batch of {batch_size}")
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 1000003 + epoch)).tolist()
    per_rank = batch_size // world_size
    return [order[start + rank * per_rank:start + (rank + 1) * per_rank]
            for start in range(0, num_samples - batch_size + 1, batch_size)]


def poly_lr(base_lr, step, max_step, power=0.9):
    """``base_lr * (1 - step / max_step) ** power`` (SPEC 5.8)."""
    return base_lr * (1 - step / max_step) ** power


def set_poly_lr(optimizer, base_lrs, step, max_step):
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = poly_lr(base, step, max_step)


def save_checkpoint(path, payload):
    """torch.save through a temporary file: the checkpoint is whole or absent."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path, expect=None):
    """Load a checkpoint dict; ``expect`` maps keys to required values (architecture,
    number of classes, ...) and a mismatch is a PipelineError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise PipelineError(f"{path}: cannot read checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise PipelineError(f"{path}: not a checkpoint of this pipeline")
    for key, value in (expect or {}).items():
        if payload.get(key) != value:
            raise PipelineError(f"{path}: checkpoint has {key}={payload.get(key)!r}, this run needs {value!r}")
    return payload


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}


def restore_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])


def unwrap(model):
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)
