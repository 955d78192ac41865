"""Precision handling shared by the heads."""
import torch


def full_precision(x):
    """Half-precision tensors (from AMP) as float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
