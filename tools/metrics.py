"""Segmentation metrics (docs/method.md §7): confusion matrix, IoU, precision, recall; for partial
label maps (docs/method.md §8) the confusion over labelled pixels and their coverage."""
import numpy as np


def confusion_matrix(preds, gts, num_classes, ignore_index=255):
    """int64 [C, C] confusion matrix, rows ground truth, columns prediction.

    ``preds`` and ``gts`` are one label map each or sequences of them; ground-truth
    pixels equal to ``ignore_index`` are left out.
    """
    if isinstance(preds, np.ndarray) and isinstance(gts, np.ndarray) and preds.shape == gts.shape:
        preds, gts = [preds], [gts]
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, gt in zip(preds, gts, strict=True):
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
        keep = gt != ignore_index
        gt, pred = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
        if gt.size and (gt.max() >= num_classes or gt.min() < 0):
            raise ValueError(f"ground truth holds class {gt.max()} outside 0..{num_classes - 1} (or 255)")
        if pred.size and (pred.max() >= num_classes or pred.min() < 0):
            raise ValueError(f"prediction holds class {pred.max()} outside 0..{num_classes - 1}")
        total += np.bincount(gt * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    return total


def iou(confusion):
    """Per-class IoU ``TP / (TP + FP + FN)`` (NaN for classes absent from both) and the mIoU
    over the classes present."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class = np.where(union > 0, tp / union, np.nan)
    return per_class, float(np.nanmean(per_class)) if np.any(union > 0) else float("nan")


def precision_recall(confusion):
    """Per-class precision ``TP / (TP + FP)`` and recall ``TP / (TP + FN)`` (NaN where undefined)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(confusion.sum(0) > 0, tp / confusion.sum(0), np.nan)
        recall = np.where(confusion.sum(1) > 0, tp / confusion.sum(1), np.nan)
    return precision, recall


def labelled_confusion(pred, gt, num_classes, unlabelled=255, ignore_index=255):
    """Confusion matrix over the pixels that a partial label map assigns (docs/method.md §7 applied to
    the confident labels of docs/method.md §8): prediction pixels equal to ``unlabelled`` are left
    out, like ground-truth pixels equal to ``ignore_index``."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    skip = pred == unlabelled
    return confusion_matrix(np.where(skip, 0, pred), np.where(skip, ignore_index, gt), num_classes, ignore_index)


def coverage(confusion, evaluated_pixels):
    """Fraction of the evaluated (not ignored) ground-truth pixels that a partial label map
    assigns: the pixel count of its :func:`labelled_confusion` over ``evaluated_pixels``."""
    return float(np.asarray(confusion).sum()) / evaluated_pixels if evaluated_pixels else float("nan")
