"""Stage 4's labels from CAMs (docs/method.md §8): confident foreground, confident background, unsure.
(Not ``tools.random_walk.affinity_labels``, docs/method.md §9's pair labels that stage 5 derives from
these maps.)

Both rules take the image as uint8 ``[H, W, 3]`` RGB, the CAM's ``keys`` (int, ``keys[0] == 0``
background, then the image's class ids) and its map ``cam`` float ``[K, H, W]`` (background
channel first, values in [0, 1], at the image size), and return a uint8 ``[H, W]`` label map:
a class id where the foreground is confident, 0 where the background is confident, 255
(unsure) elsewhere.  The CRFs work on indices into ``keys`` (0..K-1); the result is mapped
back to class ids through ``keys``.
"""
import numpy as np

from tools.crf import crf_labels, crf_probs

UNSURE = 255


def combine_confident(fg_labels, bg_labels):
    """SIPE's combination of the two CRF label maps (class ids) into one (docs/method.md §8).

    The class of ``fg_labels`` (background as is) where it is a class, whatever
    ``bg_labels`` says; 0 where both are background; 255 elsewhere (``fg_labels``
    background, ``bg_labels`` a class).
    """
    fg_labels, bg_labels = np.asarray(fg_labels), np.asarray(bg_labels)
    labels = np.where((fg_labels == 0) & (bg_labels == 0), 0, UNSURE)
    return np.where(fg_labels > 0, fg_labels, labels).astype(np.uint8)


def confident_labels(image_uint8, keys, cam, bg_conf_scale, crf_labels_fn=crf_labels):
    """Confident labels of the SIPE / IRN kind (docs/method.md §8, the default ``--mode sipe``).

    The argmax of the CAM is refined by ``crf_labels_fn(image, index_map, K)`` (docs/method.md §8's
    label CRF) twice: with the background channel as is (confident foreground) and with
    it multiplied by ``bg_conf_scale`` (0.5 SIPE, 0.8 AE-SIPE; a smaller background
    leaves only its surest pixels: confident background); see :func:`combine_confident`.
    Ties in the argmax go to the lower index.  With no class key (``keys == [0]``) every
    pixel is background.
    """
    keys = np.asarray(keys, dtype=np.int64)
    cam = np.asarray(cam, dtype=np.float32)
    if len(keys) == 1:
        return np.zeros(cam.shape[1:], dtype=np.uint8)
    fg_index = crf_labels_fn(image_uint8, cam.argmax(0), len(keys))
    scaled = cam.copy()
    scaled[0] *= bg_conf_scale
    bg_index = crf_labels_fn(image_uint8, scaled.argmax(0), len(keys))
    return combine_confident(keys[fg_index], keys[bg_index])


def psa_background(cam, alpha):
    """PSA's class probabilities: background ``(1 - max fg) ** alpha`` stacked on the
    foreground channels ``cam[1:]`` (docs/method.md §8, ``--mode psa``; the CAM's own background
    channel is not used).  ``1 - max`` is clipped at 0 so that maps slightly above 1 give
    no NaN.  Not normalised, as in PSA: the CRF unary is ``-log p``.
    """
    foreground = np.asarray(cam, dtype=np.float32)[1:]
    background = np.maximum(1.0 - foreground.max(0), 0.0) ** alpha
    return np.concatenate([background[None], foreground])


def combine_psa(keys, low_index, high_index):
    """PSA's combination of the low- and high-alpha CRF argmaxes (indices into ``keys``).

    The low-alpha class where its argmax is a class, else 255; then 0 wherever the
    high-alpha argmax is background, which overrides a low-alpha class.  This is the order
    of PSA's affinity-label loader (``label = la; label[la == 0] = 255; label[ha == 0] = 0``);
    PSA's extra 255 for pixels with no score at all only arises in padded crops.
    """
    keys = np.asarray(keys, dtype=np.int64)
    labels = np.where(low_index > 0, keys[low_index], UNSURE)
    return np.where(high_index == 0, 0, labels).astype(np.uint8)


def psa_labels(image_uint8, keys, cam, low_alpha=4, high_alpha=32, t=10, crf_probs_fn=crf_probs):
    """Affinity labels of AffinityNet / PSA (docs/method.md §8, ``--mode psa``).

    Two CRFs on probabilities (``crf_probs_fn(image, probs, t=t, scale_factor=1)``: PSA's
    bilateral sxy 80 srgb 13 compat 10), with the background of :func:`psa_background` at
    ``low_alpha`` (``1 - max < 1``, so a low power is a strong background: a class that
    still wins is confident foreground) and at ``high_alpha`` (a weak background: where it
    still wins it is confident background); combined by :func:`combine_psa`.
    With no class key (``keys == [0]``) every pixel is background.
    """
    keys = np.asarray(keys, dtype=np.int64)
    if len(keys) == 1:
        return np.zeros(np.shape(cam)[1:], dtype=np.uint8)
    low = crf_probs_fn(image_uint8, psa_background(cam, low_alpha), t=t, scale_factor=1)
    high = crf_probs_fn(image_uint8, psa_background(cam, high_alpha), t=t, scale_factor=1)
    return combine_psa(keys, low.argmax(0), high.argmax(0))
