"""docs/method.md §7 metrics on hand-made cases."""
import math

import numpy as np
import pytest

from tools.metrics import confusion_matrix, iou, precision_recall


def test_confusion_matrix_by_hand_with_ignored_pixels():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    expected = np.array([[1, 1, 0],   # gt 0: one right, one called 1
                         [0, 1, 1],   # gt 1: one right, one called 2
                         [0, 0, 1]])  # gt 2: right; the 255 pixel is not counted
    assert np.array_equal(confusion_matrix(pred, gt, 3), expected)
    assert confusion_matrix(pred, gt, 3).dtype == np.int64


def test_confusion_matrix_sums_over_images():
    gts = [np.array([[0, 1]]), np.array([[1, 1], [255, 0]])]
    preds = [np.array([[0, 0]]), np.array([[1, 0], [1, 0]])]
    total = confusion_matrix(preds, gts, 2)
    assert np.array_equal(total, np.array([[2, 0], [2, 1]]))


def test_iou_precision_recall_by_hand():
    confusion = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    per_class, miou = iou(confusion)
    assert np.allclose(per_class, [1 / 2, 1 / 3, 1 / 2])
    assert math.isclose(miou, (1 / 2 + 1 / 3 + 1 / 2) / 3)
    precision, recall = precision_recall(confusion)
    assert np.allclose(precision, [1, 1 / 2, 1 / 2])
    assert np.allclose(recall, [1 / 2, 1 / 2, 1])


def test_miou_skips_classes_absent_from_prediction_and_ground_truth():
    confusion = confusion_matrix(np.array([0, 0, 2]), np.array([0, 0, 2]), 4)
    per_class, miou = iou(confusion)
    assert math.isnan(per_class[1]) and math.isnan(per_class[3])
    assert miou == 1.0


def test_out_of_range_labels_are_errors():
    with pytest.raises(ValueError, match="ground truth holds class 5"):
        confusion_matrix(np.array([0]), np.array([5]), 3)
    with pytest.raises(ValueError, match="prediction holds class 3"):
        confusion_matrix(np.array([3]), np.array([0]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix([np.zeros((2, 2))], [np.zeros((2, 3))], 3)
