"""Dataset sources (VOC 2012, COCO 2014, custom VOC-layout folders) on disk (docs/method.md §3).

A *source* describes a dataset on disk: its split lists, image and mask files and the
image-level class labels.  Class id 0 is background; foreground classes are 1..C-1.
Problems with the files raise :class:`tools.io.PipelineError` with a one-line message
that names the file or folder.  The torch datasets built on them are in data/datasets.py.
"""
import abc
import argparse
import contextlib
import csv
import io
import re
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tools.io import PipelineError, image_size, read_label_png, write_label_png
from tools.palette import voc_palette
from tools.workers import WorkerPool

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
IGNORE = 255
CROWD_MODES = ("background", "ignore")  # COCO crowd regions in the masks: 0 (as published) or 255
VOC_HINT = ("VOCdevkit/VOC2012 with JPEGImages/, SegmentationClass/, Annotations/ and ImageSets/Segmentation/ "
            "(get VOCtrainval_11-May-2012.tar, plus SBD's SegmentationClassAug in VOC2012/ for train_aug)")
COCO_HINT = ("train2014/, val2014/ and annotations/instances_{train,val}2014.json (get train2014.zip, "
             "val2014.zip and annotations_trainval2014.zip from cocodataset.org)")
CUSTOM_HINT = ("a folder with JPEGImages/, class_names.txt, and labels.csv (columns image,labels[,split]) or "
               "ImageSets/Segmentation/<split>.txt with Annotations/*.xml (for the toy dataset run "
               "`python -m data.toy --out DIR`)")
LABELS_CSV = "labels.csv"


def check_images(ids, image_path, where):
    """Every id of ``ids`` has its image file (``image_path(id)``); the first that has none is
    ``<where(id)>: id '...' has no image <path>``."""
    for image_id in ids:
        if not image_path(image_id).is_file():
            raise PipelineError(f"{where(image_id)}: id {image_id!r} has no image {image_path(image_id)}")


def read_id_list(list_path, image_path):
    """Ids of a split list file, blank lines skipped and duplicates dropped (first kept).

    ``image_path(id)`` gives an id's image; a line naming a missing image is an error.
    """
    list_path = Path(list_path)
    if not list_path.is_file():
        available = ", ".join(sorted(p.stem for p in list_path.parent.glob("*.txt"))) or "none"
        raise PipelineError(f"{list_path}: split list not found (lists there: {available})")
    ids = dict.fromkeys(line.strip() for line in list_path.read_text().splitlines())
    ids.pop("", None)
    check_images(ids, image_path, lambda _: list_path)
    return list(ids)


def xml_object_names(xml_path):
    """Names of the <object> elements of a VOC XML annotation (object parts not included)."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise PipelineError(f"{xml_path}: cannot parse XML annotation ({exc})") from exc
    return [(obj.findtext("name") or "").strip() for obj in root.iter("object")]


def mask_classes(mask_path, num_classes):
    """Sorted foreground class ids present in a label PNG (0 and 255 left out)."""
    values = np.unique(read_label_png(mask_path, num_classes)).astype(np.int64)
    return values[(values != 0) & (values != IGNORE)]


def check_class_count(path, count):
    """A dataset of ``count`` classes (background included) must fit the label PNGs: class
    ids 0..254, 255 being ignore; more is an error naming ``path``, the file that lists them."""
    if count > IGNORE:
        raise PipelineError(f"{path}: {count} classes (background included) do not fit a label PNG, which holds "
                            f"class ids 0..{IGNORE - 1} ({IGNORE} is ignore)")


def read_class_names(path):
    """Class names of a class name file: one a line, line 0 background (docs/method.md §3)."""
    if not path.is_file():
        raise PipelineError(f"{path}: class name file not found (one name a line, line 0 = background)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) < 2 or names[0].strip("_").lower() != "background":
        raise PipelineError(f"{path}: needs 'background' on the first line and at least one class after it")
    if len(set(names)) != len(names):
        raise PipelineError(f"{path}: duplicate class names")
    check_class_count(path, len(names))
    return names


LABELS_COLUMNS = ("image", "labels", "split")


def read_labels_csv(path, class_names):
    """Image-level labels of a ``labels.csv`` (header ``image,labels`` and optionally ``split``,
    each once; class names separated by spaces): {id: (sorted class ids int64, split or None)},
    in row order.  An image may be named with or without ``.jpg`` and its folder.  A header of
    other or repeated columns, a file without rows, a row of more fields than the header, an
    unknown class name, an image without labels or named twice is an error naming the file
    and the row."""
    index = {name: k for k, name in enumerate(class_names) if k > 0}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [column.strip() for column in next(reader, [])]
            check_labels_header(path, header)
            rows = {}
            for fields in reader:
                where = f"{path}: row {reader.line_num}"
                if not any(field.strip() for field in fields):
                    continue  # a blank line
                if len(fields) > len(header):
                    raise PipelineError(f"{where}: {len(fields)} fields, the header names {len(header)} "
                                        f"({','.join(header)}); quote a field that holds a comma")
                row = dict(zip(header, fields))
                image_id = Path(row.get("image", "").strip()).name  # JPEGImages/a.jpg names a.jpg
                image_id = image_id[:-4] if image_id.lower().endswith(".jpg") else image_id
                names = row.get("labels", "").split()
                if not image_id:
                    raise PipelineError(f"{where}: no image named")
                if image_id in rows:
                    raise PipelineError(f"{where}: image {image_id!r} is named a second time")
                if not names:
                    raise PipelineError(f"{where}: image {image_id!r} has no labels")
                unknown = [name for name in names if name not in index]
                if unknown:
                    raise PipelineError(f"{where}: {unknown[0]!r} is not a class of the class name file "
                                        f"({', '.join(class_names[1:])})")
                split = row.get("split", "").strip() or None
                rows[image_id] = (np.array(sorted({index[name] for name in names}), dtype=np.int64), split)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PipelineError(f"{path}: cannot read the label CSV ({exc})") from exc
    if not rows:
        raise PipelineError(f"{path}: a header and no rows; add a row image,labels[,split] for each image")
    return rows


def check_labels_header(path, header):
    """The header of a labels.csv names image and labels, optionally split, each once, and
    nothing else; anything else is an error naming the file's row 1."""
    where = f"{path}: row 1 (the header)"
    shown = ",".join(header) or "nothing"
    if "image" not in header or "labels" not in header:
        raise PipelineError(f"{where}: header must name the columns image and labels (and optionally split), "
                            f"not {shown}")
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise PipelineError(f"{where}: column {repeated[0]!r} named {header.count(repeated[0])} times in {shown}")
    other = [column for column in header if column not in LABELS_COLUMNS]
    if other:
        raise PipelineError(f"{where}: unknown column {other[0]!r} in {shown} (columns: "
                            f"{', '.join(LABELS_COLUMNS)})")


def describe_files(paths):
    """'a (missing), b' style list of the files consulted for a label."""
    return ", ".join(f"{p}" if p.is_file() else f"{p} (missing)" for p in paths)


class Source(abc.ABC):
    """A dataset on disk (docs/method.md §3).  Subclasses set ``name``, ``root`` and ``class_names``."""

    name = "source"

    def __init__(self, root):
        self.root = Path(root)
        self._ids = {}
        self._labels = {}

    @property
    def num_classes(self):
        """Number of classes including background."""
        return len(self.class_names)

    def ids(self, split):
        """Image ids of a split, in list order (loaded once)."""
        if split not in self._ids:
            self._ids[split] = self._load_ids(split)
        return list(self._ids[split])

    @abc.abstractmethod
    def image_path(self, image_id):
        """The image file of an id."""

    @abc.abstractmethod
    def mask_path(self, image_id):
        """Ground-truth label PNG of an image, or None when there is none."""

    def render_masks(self, ids, workers=0):
        """Make the ground-truth PNGs of ``ids`` that are not files yet (COCO's, from its
        annotations, in ``workers`` processes); an explicit step before any reader, e.g.
        before a pool starts."""

    def labels(self, image_id):
        """Sorted unique foreground class ids (int64, in 1..C-1) of an image; never empty."""
        if image_id not in self._labels:
            self._labels[image_id] = self._load_labels(image_id)
        return self._labels[image_id].copy()

    def check_split(self, split):
        """Check that every image of a split exists and has labels; raise on the first problem."""
        for image_id in self.ids(split):
            path = self.image_path(image_id)
            if not path.is_file():
                raise PipelineError(f"{path}: image of {image_id!r} ({self.name} {split}) not found")
            self.labels(image_id)

    @abc.abstractmethod
    def has_split(self, split):
        """Whether the dataset lists a split of this name (its list may still be broken)."""

    @abc.abstractmethod
    def _load_ids(self, split):
        """The ids of a split, read from the dataset."""

    @abc.abstractmethod
    def _load_labels(self, image_id):
        """The foreground class ids of an image, read from the dataset."""


class VOCLayoutSource(Source):
    """A folder in VOC layout: JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
    Annotations/<id>.xml and split lists ImageSets/Segmentation/<split>.txt.

    Labels come from the XML object names, or failing that from a mask.
    """

    def __init__(self, root, hint):
        super().__init__(root)
        if not (self.root / "JPEGImages").is_dir():
            what = "folder not found" if not self.root.is_dir() else "no JPEGImages/ folder"
            raise PipelineError(f"{self.root}: {self.name} dataset {what}; expected {hint}")

    @property
    def list_dir(self):
        return self.root / "ImageSets" / "Segmentation"

    def has_split(self, split):
        return (self.list_dir / f"{split}.txt").is_file()

    def _load_ids(self, split):
        return read_id_list(self.list_dir / f"{split}.txt", self.image_path)

    def image_path(self, image_id):
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def _mask_candidates(self, image_id):
        """Label PNGs of an image for ``mask_path``, preferred first."""
        return [self.root / "SegmentationClass" / f"{image_id}.png"]

    def _label_mask_candidates(self, image_id):
        """Label PNGs of an image for the label fallback, preferred first."""
        return self._mask_candidates(image_id)

    def mask_path(self, image_id):
        return next((p for p in self._mask_candidates(image_id) if p.is_file()), None)

    def _xml_classes(self, xml_path):
        index = {name: k for k, name in enumerate(self.class_names) if k > 0}
        ids = set()
        for name in xml_object_names(xml_path):
            if name not in index:
                raise PipelineError(f"{xml_path}: object name {name!r} is not a {self.name} class "
                                    f"({', '.join(self.class_names[1:])})")
            ids.add(index[name])
        return np.array(sorted(ids), dtype=np.int64)

    def _load_labels(self, image_id):
        xml_path = self.root / "Annotations" / f"{image_id}.xml"
        consulted = [xml_path]
        if xml_path.is_file():
            classes = self._xml_classes(xml_path)
            if classes.size:
                return classes
        masks = self._label_mask_candidates(image_id)
        mask = next((p for p in masks if p.is_file()), None)
        consulted += masks if mask is None else [mask]
        if mask is not None:
            classes = mask_classes(mask, self.num_classes)
            if classes.size:
                return classes
        raise PipelineError(f"{self.image_path(image_id)}: no foreground class label for image {image_id!r} "
                            f"(consulted: {describe_files(consulted)})")


class CustomSource(VOCLayoutSource):
    """Any folder of JPEGImages/ plus a class name file (docs/method.md §3); the toy dataset is one.

    ``class_names_file`` (default ``root/class_names.txt``) has one name a line, line 0
    background.  Image-level labels come from ``labels.csv`` at the root where it names
    the image, else from the XML annotations or masks of the VOC layout.  Splits are the
    ``ImageSets/Segmentation/*.txt`` lists, or where a list is missing the CSV rows whose
    ``split`` column names it.  Masks are optional: only scoring needs them.
    """

    name = "custom"

    def __init__(self, root, class_names_file=None):
        super().__init__(root, CUSTOM_HINT)
        self.class_names_file = Path(class_names_file) if class_names_file else self.root / "class_names.txt"
        self.class_names = read_class_names(self.class_names_file)
        self._csv = None

    @property
    def csv_rows(self):
        """The rows of ``labels.csv`` ({id: (class ids, split)}; empty without the file), read once."""
        if self._csv is None:
            path = self.root / LABELS_CSV
            self._csv = read_labels_csv(path, self.class_names) if path.is_file() else {}
        return self._csv

    def has_split(self, split):
        return super().has_split(split) or any(row_split == split for _, row_split in self.csv_rows.values())

    def _load_ids(self, split):
        if super().has_split(split) or not (self.root / LABELS_CSV).is_file():
            return super()._load_ids(split)
        ids = [image_id for image_id, (_, row_split) in self.csv_rows.items() if row_split == split]
        if not ids:
            splits = sorted({row_split for _, row_split in self.csv_rows.values() if row_split})
            raise PipelineError(f"{self.list_dir / (split + '.txt')}: split list not found, and no row of "
                                f"{self.root / LABELS_CSV} has split {split!r} (splits there: "
                                f"{', '.join(splits) or 'none: add a split column'})")
        check_images(ids, self.image_path, lambda _: f"{self.root / LABELS_CSV}: split {split!r}")
        return ids

    def _load_labels(self, image_id):
        if image_id in self.csv_rows:
            return self.csv_rows[image_id][0]
        return super()._load_labels(image_id)


class VOCSource(VOCLayoutSource):
    """PASCAL VOC 2012 (docs/method.md §3); ``root`` is VOCdevkit/VOC2012 or the VOCdevkit folder.

    ``train_aug`` = (ids of SegmentationClassAug | train) - val, in sorted order; other
    splits are the lists in ImageSets/Segmentation.  Masks come from SegmentationClass,
    else SegmentationClassAug; the label fallback prefers SegmentationClassAug.
    """

    name = "voc"

    def __init__(self, root):
        root = Path(root)
        super().__init__(root / "VOC2012" if (root / "VOC2012" / "JPEGImages").is_dir() else root, VOC_HINT)
        self.class_names = ["background", *VOC_CLASSES]

    def _load_ids(self, split):
        if split != "train_aug":
            return super()._load_ids(split)
        aug_dir = self.root / "SegmentationClassAug"
        if not aug_dir.is_dir():
            raise PipelineError(f"{aug_dir}: folder not found; train_aug needs SBD's SegmentationClassAug "
                                "(the augmented masks, one PNG per image) beside JPEGImages/")
        val = set(self.ids("val"))
        ids = sorted(({p.stem for p in aug_dir.glob("*.png")} | set(self.ids("train"))) - val)
        check_images(ids, self.image_path, lambda image_id: aug_dir / f"{image_id}.png")
        return ids

    def has_split(self, split):
        return (self.root / "SegmentationClassAug").is_dir() if split == "train_aug" else super().has_split(split)

    def _mask_candidates(self, image_id):
        return [self.root / folder / f"{image_id}.png" for folder in ("SegmentationClass", "SegmentationClassAug")]

    def _label_mask_candidates(self, image_id):
        return self._mask_candidates(image_id)[::-1]


class COCOSource(Source):
    """MS COCO 2014 (docs/method.md §3): ``root`` holds train2014/, val2014/ and annotations/.

    The categories map to contiguous ids 1..K in ascending category-id order.  A split holds
    the images with at least one non-crowd annotation; labels are the classes of those
    annotations.  Semantic masks are rendered on first request as the published ones
    (non-crowd instances painted in annotation order, crowd regions 0; with
    ``crowd="ignore"`` crowd regions that no instance covers are 255) and cached as PNGs in
    ``cache_dir/<split>2014/`` (default ``cache_dir``: ``root/semantic_masks``, or
    ``root/semantic_masks_crowd_ignore``).  Annotation files load on first use.
    """

    name = "coco"
    ID_PATTERN = re.compile(r"COCO_(train|val)2014_\d+")

    def __init__(self, root, cache_dir=None, crowd="background"):
        super().__init__(root)
        if not (self.root / "annotations").is_dir():
            what = "folder not found" if not self.root.is_dir() else "no annotations/ folder"
            raise PipelineError(f"{self.root}: COCO 2014 {what}; expected {COCO_HINT}")
        if crowd not in CROWD_MODES:
            raise PipelineError(f"unknown COCO crowd mode {crowd!r} (choose from {', '.join(CROWD_MODES)})")
        self.crowd = crowd
        default_cache = "semantic_masks" if crowd == "background" else "semantic_masks_crowd_ignore"
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / default_cache
        self._apis = {}
        self._class_of_category = None
        self._class_names = None

    def has_split(self, split):
        return Path(self.annotation_file(split)).is_file()

    def annotation_file(self, split):
        return self.root / "annotations" / f"instances_{split}2014.json"

    def _api(self, split):
        """The pycocotools COCO object of a split, loaded once."""
        if split not in self._apis:
            path = self.annotation_file(split)
            if not path.is_file():
                raise PipelineError(f"{path}: COCO annotation file not found; expected {COCO_HINT}")
            from pycocotools.coco import COCO
            with contextlib.redirect_stdout(io.StringIO()):
                api = COCO(str(path))
            self._set_categories(api.loadCats(api.getCatIds()), path)
            self._apis[split] = api
        return self._apis[split]

    def _set_categories(self, categories, path):
        categories = sorted(categories, key=lambda c: c["id"])
        names = ["background", *(c["name"] for c in categories)]
        check_class_count(path, len(names))
        if self._class_names is not None and names != self._class_names:
            raise PipelineError(f"{path}: categories differ from those of the other split")
        self._class_names = names
        self._class_of_category = {c["id"]: k + 1 for k, c in enumerate(categories)}

    @property
    def class_names(self):
        """Background plus the category names in ascending category-id order (loads a split)."""
        if self._class_names is None:
            split = next((s for s in ("val", "train") if self.annotation_file(s).is_file()), "val")
            self._api(split)
        return self._class_names

    def split_of(self, image_id):
        match = self.ID_PATTERN.fullmatch(image_id)
        if match is None:
            raise PipelineError(f"{image_id!r} is not a COCO 2014 image id (COCO_<train|val>2014_<number>)")
        return match.group(1)

    def _image_record(self, image_id):
        """(COCO api, image id number) of an image id."""
        api = self._api(self.split_of(image_id))
        number = int(image_id.rsplit("_", 1)[1])
        if number not in api.imgs:
            raise PipelineError(f"{image_id!r} is not in {self.annotation_file(self.split_of(image_id))}")
        return api, number

    def _load_ids(self, split):
        api = self._api(split)
        return sorted(Path(api.imgs[number]["file_name"]).stem for number, anns in api.imgToAnns.items()
                      if any(not a.get("iscrowd", 0) for a in anns))

    def image_path(self, image_id):
        return self.root / f"{self.split_of(image_id)}2014" / f"{image_id}.jpg"

    def _load_labels(self, image_id):
        api, number = self._image_record(image_id)
        classes = sorted({self._class_of_category[a["category_id"]] for a in api.imgToAnns[number]
                          if not a.get("iscrowd", 0)})
        if not classes:
            raise PipelineError(f"{self.image_path(image_id)}: no foreground class label for image {image_id!r} "
                                f"(no non-crowd annotation in {self.annotation_file(self.split_of(image_id))})")
        return np.array(classes, dtype=np.int64)

    def _mask_task(self, image_id):
        """What ``coco_semantic_mask`` needs of an image: (height, width, its annotations,
        the class of each category, the crowd mode), no more of the annotation file."""
        api, number = self._image_record(image_id)
        info = api.imgs[number]
        return info["height"], info["width"], api.imgToAnns[number], self._class_of_category, self.crowd

    def render_mask(self, image_id):
        """Semantic uint8 mask of an image (``coco_semantic_mask``)."""
        return coco_semantic_mask(*self._mask_task(image_id))

    def _mask_cache(self, image_id):
        return self.cache_dir / f"{self.split_of(image_id)}2014" / f"{image_id}.png"

    def render_masks(self, ids, workers=0):
        """Render the masks of ``ids`` missing from the cache (``render_mask``), once, in
        ``workers`` processes (0: here); each task carries its image's annotations, so no
        worker loads the annotation file.  A killed run resumes: the PNGs are written whole."""
        missing, tasks = self.mask_tasks(ids)
        folders = {self._mask_cache(image_id).parent for image_id in ids}
        with WorkerPool(workers, "mask rendering", writes_to=folders) as pool:
            for _ in tqdm(pool.map(write_semantic_mask, tasks), total=missing, desc="COCO masks", disable=not missing,
                          dynamic_ncols=True):
                pass

    def mask_tasks(self, ids):
        """(how many, the ``write_semantic_mask`` tasks) of the masks of ``ids`` not cached yet."""
        missing = [image_id for image_id in ids if not self._mask_cache(image_id).is_file()]
        return len(missing), ((self._mask_task(image_id), self._mask_cache(image_id)) for image_id in missing)

    def __getstate__(self):
        """Pickled for pool workers without the annotation files (hundreds of MB for train):
        the categories are resolved first, and a worker needs no more (mask paths come
        from the ids)."""
        names = self.class_names  # loads the categories, here, once
        return {**self.__dict__, "_apis": {}, "_class_names": names}

    def mask_path(self, image_id):
        path = self._mask_cache(image_id)
        if not path.is_file():
            raise PipelineError(f"{path}: COCO mask not rendered (render_masks makes it from the annotations)")
        return path


def coco_semantic_mask(height, width, annotations, class_of_category, crowd_mode):
    """Semantic uint8 mask of one COCO image (docs/method.md §3): the non-crowd instances painted in
    annotation order (a later one over an earlier one), crowd regions 0, or 255 where no
    instance covers them with ``crowd_mode`` "ignore".  Polygons and RLEs are decoded by
    pycocotools, as its ``COCO.annToMask`` does."""
    from pycocotools import mask as mask_utils

    mask = np.zeros((height, width), dtype=np.uint8)
    crowd = np.zeros(mask.shape, dtype=bool)
    for ann in annotations:
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        region = mask_utils.decode(rle).astype(bool)
        if ann.get("iscrowd", 0):
            crowd |= region
        else:
            mask[region] = class_of_category[ann["category_id"]]
    if crowd_mode == "ignore":
        mask[crowd & (mask == 0)] = IGNORE
    return mask


def write_semantic_mask(item):
    """Render one ``(coco_semantic_mask arguments, PNG path)`` and write it (a pool task)."""
    task, path = item
    write_label_png(path, coco_semantic_mask(*task), voc_palette())


SOURCES = {"voc": VOCSource, "coco": COCOSource, "custom": CustomSource}
DATASETS = tuple(SOURCES)


def build_source(dataset, root, coco_crowd="background", **kw):
    """The source of a dataset by name (one of DATASETS); ``kw`` go to its constructor,
    ``coco_crowd`` (how COCO masks treat crowd regions) to COCO's only."""
    if dataset not in SOURCES:
        raise PipelineError(f"unknown dataset {dataset!r} (choose from {', '.join(DATASETS)})")
    if dataset == "coco":
        kw["crowd"] = coco_crowd
    return SOURCES[dataset](root, **kw)


def label_map_path(source, label_dir, image_id):
    """The label map of an image: ``label_dir/<id>.png``, or with ``label_dir`` None its
    ground-truth mask (None where it has none)."""
    return source.mask_path(image_id) if label_dir is None else Path(label_dir) / f"{image_id}.png"


def check_label_maps(source, split, label_dir, threads=8):
    """Read every label map of a split (``label_map_path``) before training on them: a
    missing or corrupt PNG, a value that is no class id (nor 255), a size that is not its
    image's, is a PipelineError naming the file."""
    names = source.ids(split)
    if label_dir is None:
        source.render_masks(names)  # COCO: from its annotations, once
    missing = [name for name in names if not (label_map_path(source, label_dir, name) or Path()).is_file()]
    if missing and label_dir is None:
        raise PipelineError(f"{source.root}: no ground-truth mask for {len(missing)} of the {len(names)} images of "
                            f"{split} (e.g. {missing[0]}); training on the ground truth needs one for every image")
    if missing:
        raise PipelineError(f"{label_dir}: no label PNG for {len(missing)} of the {len(names)} images of {split} "
                            f"(e.g. {missing[0]}.png)")

    def check(name):
        path = label_map_path(source, label_dir, name)
        shape = read_label_png(path, source.num_classes).shape
        size = image_size(source.image_path(name))
        if shape != size:
            raise PipelineError(f"{path}: size {list(shape)} differs from its image {list(size)}")

    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(check, names):
            pass


def main(argv=None):
    """``python -m data.sources --has-split SPLIT``: exit status 0 when the dataset lists the
    split, 1 when not (the drivers ask before running stage 7 on a custom dataset's val)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--has-split", required=True, metavar="SPLIT")
    args = parser.parse_args(argv)
    try:
        found = build_source(args.dataset, args.data_root).has_split(args.has_split)
    except PipelineError as exc:
        parser.exit(2, f"error: {exc}\n")
    sys.exit(0 if found else 1)


if __name__ == "__main__":
    main()
