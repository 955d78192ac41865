"""Dense CRF refinement with pydensecrf (docs/method.md §8, §12).

Two modes: ``crf_labels`` refines a hard label map (the confident-region CRF of SIPE
and IRN), ``crf_probs`` refines class probabilities (the PSA mode).  Both take the
image as uint8 ``[H, W, 3]`` RGB and run on the CPU.
"""
import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax


def _checked_image(image):
    """The image as a C-contiguous, writable uint8 ``[H, W, 3]`` array, or ValueError (docs/method.md §8).

    pydensecrf takes the image as a writable buffer, so a read-only array (as numpy views
    of PIL images are) is copied.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    return np.require(image, requirements=("C", "W"))


def _check_size(image, shape, what):
    """Raise ValueError unless ``shape`` (H, W) matches the image's (docs/method.md §8)."""
    if tuple(shape) != image.shape[:2]:
        raise ValueError(f"{what} size {list(shape)} does not match the image size "
                         f"{list(image.shape[:2])}")


def _infer(image, unary, t, gaussian, bilateral):
    """Mean-field inference: ``t`` iterations; returns Q as float32 ``[C, H, W]``.

    ``gaussian = (sxy, compat)`` and ``bilateral = (sxy, srgb, compat)``.
    """
    h, w = image.shape[:2]
    n_labels = unary.shape[0]
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    sxy, compat = gaussian
    crf.addPairwiseGaussian(sxy=sxy, compat=compat)
    sxy, srgb, compat = bilateral
    crf.addPairwiseBilateral(sxy=sxy, srgb=srgb, rgbim=image, compat=compat)
    return np.asarray(crf.inference(t), dtype=np.float32).reshape(n_labels, h, w)


def crf_labels(image_uint8, labels, n_labels, t=10, gt_prob=0.7):
    """Refine a label map ``[H, W]`` (values in ``0 .. n_labels-1``) with a dense CRF (docs/method.md §8).

    Unary: the given label has probability ``gt_prob``, the others share the rest
    (label 0 is an ordinary class).  Pairwise: Gaussian sxy 3 compat 3, bilateral sxy 50
    srgb 5 compat 10.  Returns the int64 ``[H, W]`` argmax after ``t`` iterations.
    """
    image = _checked_image(image_uint8)
    labels = np.asarray(labels)
    _check_size(image, labels.shape, "labels")
    if n_labels < 2:
        raise ValueError(f"n_labels must be at least 2, got {n_labels}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"labels must lie in [0, {n_labels - 1}], got "
                         f"[{labels.min()}, {labels.max()}]")
    unary = unary_from_labels(labels.astype(np.int64), n_labels, gt_prob=gt_prob,
                              zero_unsure=False)
    q = _infer(image, unary, t, gaussian=(3, 3), bilateral=(50, 5, 10))
    return np.argmax(q, axis=0)


def _probs_unary(image, probs):
    """``-log(max(p, 1e-5))`` of probabilities ``[C, H, W]`` of the image's size."""
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"probs must be [C, H, W], got {list(probs.shape)}")
    _check_size(image, probs.shape[1:], "probs")
    return unary_from_softmax(probs)


def crf_probs(image_uint8, probs, t=10, scale_factor=1):
    """Refine class probabilities ``[C, H, W]`` with a dense CRF, PSA mode (docs/method.md §8).

    Unary ``-log(max(p, 1e-5))``; Gaussian sxy ``3 / scale_factor`` compat 3; bilateral
    sxy ``80 / scale_factor`` srgb 13 compat 10.  Returns float32 ``[C, H, W]``
    probabilities (each pixel sums to 1) after ``t`` iterations.
    """
    image = _checked_image(image_uint8)
    return _infer(image, _probs_unary(image, probs), t, gaussian=(3 / scale_factor, 3),
                  bilateral=(80 / scale_factor, 13, 10))


def crf_segmentation(image_uint8, probs, t=10):
    """The segmentation network's CRF (docs/method.md §13, DeepLab's settings): probabilities
    ``[C, H, W]`` -> int64 ``[H, W]`` labels.  Unary ``-log(max(p, 1e-5))``; Gaussian sxy 1
    compat 3; bilateral sxy 67 srgb 3 compat 4; ``t`` iterations."""
    image = _checked_image(image_uint8)
    return np.argmax(_infer(image, _probs_unary(image, probs), t, gaussian=(1, 3), bilateral=(67, 3, 4)), axis=0)
