"""The torch datasets of the stages (docs/method.md §3): training images with their class labels or
label maps, augmented reproducibly, and full-size images for inference.  They read
through a source (data/sources.py)."""
from pathlib import Path

import numpy as np
import torch

from data.sources import label_map_path
from data.transforms import capped_scales, scaled_images
from tools.cam_files import load_cam
from tools.io import PipelineError, read_image, read_label_png

def multi_hot(labels, num_classes):
    """float32 [C-1] with 1 at index k-1 for every class k in ``labels``."""
    vector = np.zeros(num_classes - 1, dtype=np.float32)
    vector[np.asarray(labels, dtype=np.int64) - 1] = 1.0
    return vector


class AugmentedDataset(torch.utils.data.Dataset):
    """Training images of a split; item i of epoch e draws its augmentation from
    ``numpy.random.default_rng([seed, e, i])``, so it does not depend on the worker that
    loads it.  Call ``set_epoch`` every epoch."""

    def __init__(self, source, split, transform, seed=0):
        self.source = source
        self.ids = source.ids(split)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.ids)

    def rng(self, index):
        return np.random.default_rng([self.seed, self.epoch, index])


class ClassificationDataset(AugmentedDataset):
    """Training images with multi-hot labels (docs/method.md §3, §5.8)."""

    def __getitem__(self, index):
        image_id = self.ids[index]
        image, valid = self.transform(read_image(self.source.image_path(image_id)), self.rng(index))
        label = multi_hot(self.source.labels(image_id), self.source.num_classes)
        return {"name": image_id, "image": image, "label": torch.from_numpy(label), "valid": valid}


class LabelMapDataset(AugmentedDataset):
    """Training images with a label map each, ``label_dir/<id>.png`` (0 background, class
    ids, 255 unsure or ignored), both augmented together: the affinity labels of stage 5
    (docs/method.md §9) or the pseudo-labels of stage 7 (docs/method.md §13); ``label_dir`` None: the dataset's
    ground-truth masks (stage 7's fully supervised reference)."""

    def __init__(self, source, split, label_dir, transform, seed=0):
        super().__init__(source, split, transform, seed)
        self.label_dir = None if label_dir is None else Path(label_dir)

    def __getitem__(self, index):
        image_id = self.ids[index]
        image = read_image(self.source.image_path(image_id))
        label_path = label_map_path(self.source, self.label_dir, image_id)
        labels = read_label_png(label_path, self.source.num_classes)
        if labels.shape != image.shape[:2]:
            raise PipelineError(f"{label_path}: size {labels.shape} differs from its image {image.shape[:2]}")
        image, labels = self.transform.with_labels(image, labels, self.rng(index))
        return {"name": image_id, "image": image, "labels": labels}


def single(batch):
    """DataLoader collate for batches of one item (inference images of any size)."""
    return batch[0]


class InferenceDataset(torch.utils.data.Dataset):
    """Full-size images with their class keys ``[0] + labels`` (docs/method.md §2, §5.9).

    With ``scales``, each item also holds ``scaled``: the image at each scale of
    inference (``data.transforms.scaled_images``), so that the PIL resizing runs in the
    loader's workers, beside the network rather than before it; with ``largest_side``, the
    scales of an image whose longer side is above it are reduced (``capped_scales``).
    """

    def __init__(self, source, split, ids=None, scales=None, keys=True, largest_side=None):
        self.source = source
        self.ids = list(ids) if ids is not None else source.ids(split)
        self.scales = scales
        self.largest_side = largest_side
        self.keys = keys  # False for images without labels (a test split)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        image_id = self.ids[index]
        item = {"name": image_id, "image": read_image(self.source.image_path(image_id))}
        if self.keys:
            item["keys"] = np.concatenate([[0], self.source.labels(image_id)]).astype(np.int64)
        if self.scales is not None:
            item["scaled"] = scaled_images(item["image"],
                                           capped_scales(item["image"].shape[:2], self.scales, self.largest_side))
        return item


class CamDataset(torch.utils.data.Dataset):
    """Full-size images with one map of their CAM files (docs/method.md §2), for the random walk
    (docs/method.md §10): the CAM files' decoding runs in the loader's workers, beside the network.
    Items: name, image, keys and the map [K, H, W] (``tools.cam_files.load_cam``'s checks: the
    file's size, classes and ``made_by`` record)."""

    def __init__(self, source, ids, cam_dir, map_name, made_by=None):
        self.source, self.ids, self.cam_dir = source, list(ids), Path(cam_dir)
        self.map_name, self.made_by = map_name, made_by

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        image_id = self.ids[index]
        image = read_image(self.source.image_path(image_id))
        keys, cam = load_cam(self.cam_dir / f"{image_id}.npy", self.map_name, self.source.num_classes,
                             image.shape[:2], self.made_by, self.source.labels(image_id))
        return {"name": image_id, "image": image, "keys": keys, "cam": cam}
