"""What the dataset readers (VOC, COCO, YOLO, CSV, LabelMe) share: cached annotations, box sanitising,
samples, proposals, background images, and the helpers of the readers that name images by path.

A subclass parses every annotation once in `__init__` into `records` (one dict per image) and sets
`classes`, `image_ids` and `image_paths`. Record boxes are float32 [N, 4] xyxy, 0-based continuous pixels,
NOT yet clipped; `size` is the annotated (h, w) or None when the file does not say.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Optional

import numpy as np
from torch.utils.data import Dataset

from .errors import DataError, warn_once
from .image_io import cached_image_size, read_image, read_image_size

__all__ = ["DetectionDataset", "ConcatDetection", "sanitize", "box_record", "named_record", "image_sizes",
           "path_ids"]

MIN_BOX_SIZE = 1.0  # boxes narrower or lower than this (pixels, after clipping) are degenerate


def sanitize(record: dict, size: tuple) -> dict:
    """Clip the record's boxes to `size` (h, w) and drop degenerate ones; the full-GT annotation dict."""
    boxes = clip_boxes(record["boxes"], size)
    keep = degenerate_free(boxes) & _valid(record)
    return {
        "boxes": boxes[keep],
        "labels": record["labels"][keep],
        "difficult": record["difficult"][keep],
        "iscrowd": record["iscrowd"][keep],
        "image_id": record["image_id"],
        "orig_size": (int(size[0]), int(size[1])),
    }


def clip_boxes(boxes: np.ndarray, size: tuple) -> np.ndarray:
    """A copy of xyxy `boxes` clipped to an image of `size` (h, w)."""
    h, w = size
    out = boxes.copy()
    out[:, 0::2] = out[:, 0::2].clip(0, w)
    out[:, 1::2] = out[:, 1::2].clip(0, h)
    return out


def degenerate_free(boxes: np.ndarray) -> np.ndarray:
    return ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIZE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIZE)


def _valid(record: dict) -> np.ndarray:
    """False for boxes a reader already knows are degenerate as annotated (VOC's zero-area clicks)."""
    return record.get("valid", np.ones(len(record["boxes"]), dtype=bool))


def degenerate_reasons(record: dict, size: tuple) -> list:
    """Why each box that `sanitize` drops is dropped, in box order (for a warning that names them)."""
    boxes, valid = record["boxes"], _valid(record)
    big_enough = degenerate_free(boxes)  # before clipping
    out = []
    for k in np.flatnonzero(~(degenerate_free(clip_boxes(boxes, size)) & valid)):
        x1, y1, x2, y2 = boxes[k]
        if not valid[k]:
            out.append("zero area as annotated")
        elif x2 < x1 or y2 < y1:
            out.append("inverted corners")
        else:
            out.append("outside the image" if big_enough[k] else f"under {MIN_BOX_SIZE:g} px")
    return out


class DetectionDataset(Dataset):
    """`img, target = ds[i]`: img uint8 [H, W, 3] RGB; target as documented in `__getitem__`."""

    classes: list
    image_ids: list
    image_paths: list
    records: list

    def __init__(
        self,
        *,
        use_difficult: bool = False,
        skip_bad_images: bool = False,
        transform: Optional[Callable] = None,
        proposals: Optional[dict] = None,
    ) -> None:
        self.use_difficult = use_difficult
        self.skip_bad_images = skip_bad_images
        self.transform = transform
        self.proposals = proposals
        self._annotations: dict = {}
        self._bad: set = set()

    def _finish_init(self, source: str) -> None:
        """Fill missing sizes from image headers, warn once about degenerate boxes, check proposals."""
        self.source = source  # names the dataset in errors
        dropped = []  # (image id, why) per dropped box
        for i, rec in enumerate(self.records):
            if rec["size"] is None:
                rec["size"] = read_image_size(self.image_paths[i])
            dropped += [(rec["image_id"], why) for why in degenerate_reasons(rec, rec["size"])]
        if dropped:
            named = ", ".join(f"{i} ({why})" for i, why in dropped[:4])
            more = f" and {len(dropped) - 4} more" if len(dropped) > 4 else ""
            warnings.warn(f"{source}: dropped {len(dropped)} degenerate box(es): {named}{more}", stacklevel=3)
        if self.proposals is not None:
            missing = [i for i in self.image_ids if str(i) not in self.proposals]
            if missing:
                raise DataError(f"{source}: {len(missing)} image id(s) missing from the proposals file, "
                                f"e.g. {missing[0]!r}")

    def __len__(self) -> int:
        return len(self.records)

    def is_background(self, i: int) -> bool:
        """True when image i has no training target: no box left after sanitising, or only crowd boxes
        (and difficult ones, unless use_difficult). It trains as a pure negative, or is dropped."""
        ann = self.get_annotation(i)
        return not (~ann["iscrowd"] & (~ann["difficult"] | self.use_difficult)).any()

    def drop_background(self) -> None:
        """Keep only images with a training target (data.keep_background=False, training split only)."""
        n = len(self)
        self._select([i for i in range(n) if not self.is_background(i)])
        if not len(self):
            raise DataError(f"{self.source}: none of its {n} images has a usable box to train on")

    def _select(self, idx: list) -> None:
        """Keep images `idx`, in that order (their cached annotations too)."""
        self._annotations = {n: self._annotations[i] for n, i in enumerate(idx) if i in self._annotations}
        self.records = [self.records[i] for i in idx]
        self.image_ids = [self.image_ids[i] for i in idx]
        self.image_paths = [self.image_paths[i] for i in idx]

    def image_size(self, i: int) -> tuple:
        """(h, w) of image i as annotated (or from its header), without decoding it."""
        return self.records[i]["size"]

    def get_annotation(self, i: int) -> dict:
        """Full ground truth of image i (difficult and crowd included), clipped, degenerate boxes dropped."""
        if i not in self._annotations:
            self._annotations[i] = sanitize(self.records[i], self.records[i]["size"])
        return self._annotations[i]

    def __getitem__(self, i: int) -> tuple:
        """img uint8 [H, W, 3] RGB; target: boxes float32 [N, 4] xyxy 0-based, labels int64 [N] in 1..K,
        difficult / iscrowd bool [N], image_id, orig_size (h, w), index, and proposals float32 [M, 4]
        when configured. Difficult (unless use_difficult) and crowd boxes are not training targets.

        With skip_bad_images an unreadable image is warned about once and the next readable one is
        returned instead (its `index` says which).
        """
        for step in range(len(self)):
            j = (i + step) % len(self)
            if j in self._bad:
                continue
            try:
                img = read_image(self.image_paths[j])
            except DataError as e:
                if not self.skip_bad_images:
                    raise
                self._bad.add(j)
                warn_once(self.image_paths[j] + ":bad", f"{e}; skipped (skip_bad_images=True)")
                continue
            return self._sample(j, img)
        raise DataError(f"no readable image left in the dataset (first: {self.image_paths[i]})")

    def _sample(self, i: int, img: np.ndarray) -> tuple:
        ann = self.get_annotation(i)
        real = img.shape[:2]
        if tuple(real) != tuple(ann["orig_size"]):
            warn_once(self.image_paths[i] + ":size", f"{self.image_paths[i]}: annotated size (h, w) = "
                      f"{ann['orig_size']} but the image is {real}; trusting the image")
            ann = sanitize(self.records[i], real)
        keep = ~ann["iscrowd"] if self.use_difficult else ~(ann["iscrowd"] | ann["difficult"])
        target = {k: ann[k][keep] for k in ("boxes", "labels", "difficult", "iscrowd")}
        target.update(image_id=ann["image_id"], orig_size=ann["orig_size"], index=i)
        if self.proposals is not None:
            target["proposals"] = clip_proposals(self.proposals[str(ann["image_id"])], real)
        if self.transform is not None:
            img, target = self.transform(img, target)
        return img, target


def box_record(image_id, boxes: list, labels: list, size: tuple) -> dict:
    """A record of an image whose boxes (xyxy pixels, not yet clipped) have no difficult / crowd flags."""
    n = len(labels)
    return {
        "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.array(labels, dtype=np.int64),
        "difficult": np.zeros(n, dtype=bool),
        "iscrowd": np.zeros(n, dtype=bool),
        "image_id": image_id,
        "size": size,
    }


def image_sizes(paths: list, where: list, known: Optional[list] = None, skip_bad: bool = False) -> list:
    """(h, w) per image: `known[i]` when its annotation says (the file must exist), else the image header
    (read once per process, `cached_image_size`). A missing or unreadable image is a DataError naming
    `where[i]` (the file and line that lists it); with `skip_bad` it is warned about and its size is None:
    the reader leaves it out, as VOC and COCO readers skip an unreadable image."""
    sizes = []
    for i, path in enumerate(paths):
        try:
            if known is not None and known[i] is not None:
                if not os.path.isfile(path):
                    raise DataError(f"{path}: image file not found")
                sizes.append(known[i])
            else:
                sizes.append(cached_image_size(path))
        except DataError as e:
            if not skip_bad:
                raise DataError(f"{where[i]}: {e}") from None
            warn_once(path + ":bad", f"{where[i]}: {e}; skipped (skip_bad_images=True)")
            sizes.append(None)
    return sizes


def path_ids(paths: list, base: str, source: str) -> list:
    """Image ids for images named by path: the path relative to `base` without its extension, '/'-separated
    (a flat folder gives the file stems, as VOC ids are). DataError naming `source` when two images share
    one."""
    ids = [os.path.splitext(os.path.relpath(p, base))[0].replace(os.sep, "/") for p in paths]
    seen: dict = {}
    for i, p in zip(ids, paths):
        if i in seen:
            raise DataError(f"{source}: images {seen[i]} and {p} have the same id {i!r} (the path without "
                            "its extension); rename one")
        seen[i] = p
    return ids


def named_record(image_id, rows: list, size: tuple, index: dict, skip_unknown: bool) -> dict:
    """The record of an image from its rows [(where, xyxy box or None for "no object", class name)]."""
    boxes, labels = [], []
    for where, box, name in rows:
        label = class_label(name, index, where, skip_unknown) if box is not None else None
        if label is not None:
            boxes.append(box)
            labels.append(label)
    return box_record(image_id, boxes, labels, size)


def class_label(name: str, index: dict, where: str, skip_unknown: bool) -> Optional[int]:
    """Label 1..K of class `name`, or None (warned) for an unknown class with `skip_unknown`."""
    if name in index:
        return index[name]
    if not skip_unknown:
        raise DataError(f"{where}: class {name!r} is not in classes {list(index)} (data.classes; or "
                        "data.skip_unknown_classes=true to skip such boxes)")
    warnings.warn(f"{where}: skipping object of unknown class {name!r}", stacklevel=3)
    return None


def clip_proposals(boxes: np.ndarray, size: tuple) -> np.ndarray:
    h, w = size
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    out[:, 0::2] = out[:, 0::2].clip(0, w)
    out[:, 1::2] = out[:, 1::2].clip(0, h)
    return out


class ConcatDetection(Dataset):
    """Several detection datasets with the same classes, one after another (VOC07+12 trainval)."""

    def __init__(self, datasets: list) -> None:
        for d in datasets[1:]:
            if list(d.classes) != list(datasets[0].classes):
                raise DataError(f"cannot concatenate datasets with different classes: {datasets[0].classes} "
                                f"vs {d.classes}")
        self.datasets = datasets
        self.classes = list(datasets[0].classes)
        self._where = [(k, j) for k, d in enumerate(datasets) for j in range(len(d))]
        self.image_ids = [d.image_ids[j] for d in datasets for j in range(len(d))]
        self.image_paths = [p for d in datasets for p in d.image_paths]
        self._offsets = np.cumsum([0] + [len(d) for d in datasets]).tolist()

    def __len__(self) -> int:
        return len(self._where)

    @property
    def transform(self) -> Optional[Callable]:
        return self.datasets[0].transform

    def image_size(self, i: int) -> tuple:
        k, j = self._where[i]
        return self.datasets[k].image_size(j)

    def get_annotation(self, i: int) -> dict:
        k, j = self._where[i]
        return self.datasets[k].get_annotation(j)

    def __getitem__(self, i: int) -> tuple:
        k, j = self._where[i]
        img, target = self.datasets[k][j]
        target["index"] += self._offsets[k]
        return img, target
