"""Dense CRF wrappers on small synthetic images (docs/method.md §8)."""
import numpy as np
import pytest

from tools.crf import crf_labels, crf_probs


def two_halves(h=40, w=60):
    """An image with a red left half and a blue right half, and its true labels 0 / 1."""
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:, : w // 2] = (200, 30, 30)
    image[:, w // 2:] = (30, 30, 200)
    truth = np.zeros((h, w), dtype=np.int64)
    truth[:, w // 2:] = 1
    return image, truth


def test_crf_labels_cleans_label_noise():
    image, truth = two_halves()
    rng = np.random.default_rng(0)
    flip = rng.random(truth.shape) < 0.2
    noisy = np.where(flip, 1 - truth, truth)
    refined = crf_labels(image, noisy, n_labels=2)
    assert refined.shape == truth.shape
    assert np.issubdtype(refined.dtype, np.integer)
    assert (refined == truth).mean() > 0.98 > (noisy == truth).mean()


def test_crf_labels_keeps_three_labels_apart():
    image, truth = two_halves()
    truth[:10] = 2
    image[:10] = (30, 200, 30)
    assert np.array_equal(crf_labels(image, truth, n_labels=3), truth)


def test_crf_probs_is_a_distribution():
    image, truth = two_halves(30, 20)
    rng = np.random.default_rng(1)
    probs = rng.random((3, 30, 20)).astype(np.float32)
    probs[0] = 0.0
    probs /= probs.sum(axis=0, keepdims=True)
    out = crf_probs(image, probs)
    assert out.shape == (3, 30, 20) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
    assert (out >= 0).all()


def test_crf_probs_sharpens_towards_image_regions():
    image, truth = two_halves()
    probs = np.stack([np.where(truth == 0, 0.6, 0.4), np.where(truth == 1, 0.6, 0.4)])
    out = crf_probs(image, probs, scale_factor=2)
    assert (out.argmax(axis=0) == truth).all()
    assert out.max(axis=0).mean() > 0.6


def test_mismatched_shapes_raise():
    image, truth = two_halves()
    with pytest.raises(ValueError, match="labels size"):
        crf_labels(image, truth[:-1], n_labels=2)
    with pytest.raises(ValueError, match="probs size"):
        crf_probs(image, np.full((2, 40, 59), 0.5))
    with pytest.raises(ValueError, match="uint8"):
        crf_labels(image.astype(np.float32), truth, n_labels=2)
    with pytest.raises(ValueError, match="uint8"):
        crf_labels(image[..., :2], truth, n_labels=2)
    with pytest.raises(ValueError, match="labels must lie"):
        crf_labels(image, truth + 1, n_labels=2)


def test_non_contiguous_image_is_accepted():
    image, truth = two_halves()
    flipped = image[:, ::-1]
    assert np.array_equal(crf_labels(flipped, truth[:, ::-1], n_labels=2), truth[:, ::-1])


def test_read_only_image_is_accepted():
    image, truth = two_halves()
    image.flags.writeable = False
    assert np.array_equal(crf_labels(image, truth, n_labels=2), truth)
    assert crf_probs(image, np.stack([truth == 0, truth == 1]).astype(np.float32)).shape == (2, 40, 60)
