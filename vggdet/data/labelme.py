"""LabelMe: a folder of LabelMe JSON files, one per image (searched recursively, sorted).

A `rectangle` shape is a box (its two corners, in either order); a `polygon` becomes its bounding box;
points are 0-based continuous pixels. `imagePath` is relative to the JSON file (Windows `\\` separators are
read as `/`); `imageHeight` / `imageWidth` give the size (the image header when they are missing). Other
shape types (circle, line, point, ...) are an error naming the file and the shape. A JSON without shapes is
a background image. An image's id is its JSON file's path relative to the folder, without `.json`.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Optional

import numpy as np

from .base import DetectionDataset, image_sizes, named_record, path_ids
from .errors import DataError

__all__ = ["LabelMeDetection", "read_labelme", "labelme_class_names"]

_MIN_POINTS = {"rectangle": 2, "polygon": 3}


class LabelMeDetection(DetectionDataset):
    """One split's folder of LabelMe JSON files. `classes`: a list, or None = the sorted labels in this
    folder (the loader gives the test split the train split's names)."""

    def __init__(
        self,
        folder: str,
        classes: Optional[list] = None,
        skip_bad_images: bool = False,
        skip_unknown_classes: bool = False,
        transform: Optional[Callable] = None,
        proposals: Optional[dict] = None,
    ) -> None:
        super().__init__(skip_bad_images=skip_bad_images, transform=transform, proposals=proposals)
        files = list_labelme(folder)
        anns = [read_labelme(f) for f in files]
        self.classes = list(classes) if classes is not None else _names(anns)
        index = {c: k + 1 for k, c in enumerate(self.classes)}
        sizes = image_sizes([a["image"] for a in anns], files, [a["size"] for a in anns], skip_bad_images)
        kept = [(f, a, s) for f, a, s in zip(files, anns, sizes) if s is not None]  # unreadable: skipped
        self.image_paths = [a["image"] for _, a, _ in kept]
        self.image_ids = path_ids([f for f, _, _ in kept], folder, folder)
        self.records = [named_record(i, a["rows"], s, index, skip_unknown_classes)
                        for i, (_, a, s) in zip(self.image_ids, kept)]
        self._finish_init(folder)


def labelme_class_names(folder: str) -> list:
    """The sorted labels in a folder of LabelMe files (the class list when data.classes is not given)."""
    return _names([read_labelme(f) for f in list_labelme(folder)])


def _names(anns: list) -> list:
    return sorted({name for a in anns for _, _, name in a["rows"]})


def list_labelme(folder: str) -> list:
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: LabelMe folder not found (expected one LabelMe .json file per image)")
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names if f.endswith(".json"))
    if not files:
        raise DataError(f"{folder}: no .json files (expected one LabelMe .json file per image)")
    return files


def read_labelme(path: str) -> dict:
    """{"image": absolute image path, "size": (h, w) or None, "rows": [(where, xyxy box, label)]}."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(d, dict) or not isinstance(d.get("shapes"), list) or not d.get("imagePath"):
        raise DataError(f"{path}: not a LabelMe file (expected 'shapes' and 'imagePath')")
    image = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)),
                                          str(d["imagePath"]).replace("\\", "/")))
    h, w = d.get("imageHeight"), d.get("imageWidth")
    if not all(isinstance(v, (int, float, type(None))) for v in (h, w)):
        raise DataError(f"{path}: imageHeight / imageWidth must be numbers, got {h!r} / {w!r}")
    size = (int(h), int(w)) if h and w else None
    rows = [_shape(s, f"{path}: shape {k}") for k, s in enumerate(d["shapes"])]
    return {"image": image, "size": size, "rows": rows}


def _shape(shape: dict, where: str) -> tuple:
    """(where, the shape's bounding box xyxy, label)."""
    kind = shape.get("shape_type") or "polygon"  # LabelMe before 3.0 wrote no shape_type: all polygons
    label = str(shape.get("label", "")).strip()
    where = f"{where} ({label!r})"
    if kind not in _MIN_POINTS:
        raise DataError(f"{where}: shape_type {kind!r} is not a box (only rectangle and polygon are)")
    try:
        pts = np.array(shape["points"], dtype=np.float64).reshape(-1, 2)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: 'points' must be a list of [x, y] pairs") from None
    if len(pts) < _MIN_POINTS[kind] or not np.isfinite(pts).all():
        raise DataError(f"{where}: a {kind} needs at least {_MIN_POINTS[kind]} finite points, got {len(pts)}")
    return where, (*pts.min(axis=0), *pts.max(axis=0)), label
