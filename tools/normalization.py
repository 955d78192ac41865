"""ImageNet normalisation of images and its inverse (docs/method.md §3, §6.2)."""
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_array(image):
    """uint8 RGB [H, W, 3] -> float32 [H, W, 3] with ImageNet mean/std (docs/method.md §3)."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    return (np.asarray(image, dtype=np.float32) / 255.0 - mean) / std


def normalize(image):
    """uint8 RGB [H, W, 3] numpy -> normalised float32 tensor [3, H, W] (docs/method.md §3)."""
    return torch.from_numpy(np.ascontiguousarray(normalize_array(image).transpose(2, 0, 1)))


def denormalize(images):
    """Normalised tensor [N, 3, H, W] -> RGB in [0, 1] (undoes ``normalize``; docs/method.md §6.2)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0.0, 1.0)
