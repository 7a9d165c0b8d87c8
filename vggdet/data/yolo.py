"""Ultralytics YOLO layout: a data.yaml, images in images/..., one label file per image in labels/....

data.yaml::

    path: .              # dataset root; relative to the yaml's folder (absent = that folder)
    train: images/train  # a folder of images (searched recursively) or a .txt list of image paths,
    val: images/val      # relative to `path` (a list of several is fine); test: optional
    names: [RBC, WBC, Platelets]  # or {0: RBC, 1: WBC, 2: Platelets}

The label file of `.../images/.../x.jpg` is `.../labels/.../x.txt` (the last `/images/` replaced, as
Ultralytics does). A row is `class cx cy w h`, normalised by the image width / height; a longer row
`class x1 y1 x2 y2 x3 y3 ...` (a segment) becomes its bounding box. No label file, or an empty one: a
background image. Normalised -> 0-based continuous pixels: x1 = (cx - w / 2) * W, y1 = (cy - h / 2) * H,
x2 = (cx + w / 2) * W, y2 = (cy + h / 2) * H. Image sizes come from the image headers (read once per process,
`image_io.cached_image_size`). Label k is names[k - 1] (YOLO class id k - 1); an image's id is its path
relative to `path`, without extension.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from .base import DetectionDataset, box_record, image_sizes, path_ids
from .errors import DataError, warn_once

__all__ = ["YOLODetection", "find_yolo_yaml", "load_yolo_yaml", "yolo_label_path", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


class YOLODetection(DetectionDataset):
    """One split ("train", "val" or "test") of the dataset described by `yaml_path`. `classes`: None, or a
    list that must equal the yaml's names (a config that says which classes it expects)."""

    def __init__(
        self,
        yaml_path: str,
        split: str,
        classes: Optional[list] = None,
        skip_bad_images: bool = False,
        skip_unknown_classes: bool = False,
        transform: Optional[Callable] = None,
        proposals: Optional[dict] = None,
    ) -> None:
        super().__init__(skip_bad_images=skip_bad_images, transform=transform, proposals=proposals)
        info = load_yolo_yaml(yaml_path)
        if split not in ("train", "val", "test") or split not in info:
            raise DataError(f"{yaml_path}: no {split!r} split (keys: train, val and optionally test)")
        if classes is not None and list(classes) != info["names"]:
            raise DataError(f"{yaml_path}: names {info['names']} differ from data.classes {list(classes)}")
        self.split, self.classes = split, info["names"]
        listed = [item for source in info[split] for item in list_images(source)]
        if not listed:
            raise DataError(f"{yaml_path}: the {split!r} split ({', '.join(info[split])}) has no images")
        sizes = image_sizes([p for p, _ in listed], [w for _, w in listed], skip_bad=skip_bad_images)
        kept = [(p, s) for (p, _), s in zip(listed, sizes) if s is not None]  # unreadable: skipped
        self.image_paths = [p for p, _ in kept]
        self.image_ids = path_ids(self.image_paths, info["root"], f"{yaml_path} [{split}]")
        self.records = [self._record(i, p, s, skip_unknown_classes)
                        for i, (p, s) in zip(self.image_ids, kept)]
        self._finish_init(f"{yaml_path} [{split}]")

    def _record(self, image_id: str, image_path: str, size: tuple, skip_unknown: bool) -> dict:
        rows = read_yolo_labels(yolo_label_path(image_path), len(self.classes), skip_unknown)
        h, w = size
        boxes = [np.array(xyxy) * [w, h, w, h] for xyxy, _ in rows]
        return box_record(image_id, boxes, [c + 1 for _, c in rows], size)


def find_yolo_yaml(root: str) -> str:
    """data.root as given (a .yaml file) or the data.yaml in that folder."""
    return os.path.join(root, "data.yaml") if os.path.isdir(root) else root


def load_yolo_yaml(path: str) -> dict:
    """{"root", "names", "train", "val" and "test" when present}: `root` is the absolute dataset folder,
    each split a list of absolute folders / .txt files (checked to exist)."""
    y = _read_yaml(path)
    for key in ("names", "train", "val"):
        if not y.get(key):
            raise DataError(f"{path}: no '{key}' key (a YOLO data.yaml needs path, train, val and names)")
    names = _names(y["names"], path)
    if "nc" in y and y["nc"] != len(names):
        raise DataError(f"{path}: nc is {y['nc']} but names lists {len(names)} classes")
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), str(y.get("path") or "")))
    out = {"root": root, "names": names}
    for key in ("train", "val", "test"):
        if y.get(key):
            out[key] = [_source(os.path.join(root, str(s)), path, key)
                        for s in (y[key] if isinstance(y[key], list) else [y[key]])]
    return out


def _read_yaml(path: str) -> dict:
    import yaml

    if not os.path.isfile(path):
        raise DataError(f"{path}: YOLO data.yaml not found (data.root names the yaml or the folder holding "
                        "data.yaml)")
    try:
        with open(path) as f:
            y = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise DataError(f"{where}: malformed YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(y, dict):
        raise DataError(f"{path}: expected a mapping with path, train, val and names, got {type(y).__name__}")
    return y


def _names(names, path: str) -> list:
    """`names` as a list, or a {id: name} map whose ids are 0..K-1."""
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{path}: names ids must be 0..{len(names) - 1}, got {sorted(names)}")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list):
        raise DataError(f"{path}: names must be a list or an {{id: name}} map, got {names!r}")
    return [str(n) for n in names]


def _source(source: str, path: str, key: str) -> str:
    if not os.path.exists(source):
        raise DataError(f"{path}: {key} source {source} not found (a folder of images or a .txt list of "
                        "image paths, relative to the yaml's path)")
    return source


def list_images(source: str) -> list:
    """[(image path, where it is listed)] of one split source: a folder (searched recursively, sorted) or a
    .txt list (one image path a line, relative to the list's folder unless absolute)."""
    if os.path.isdir(source):
        found = [os.path.join(d, f) for d, _, files in os.walk(source) for f in files
                 if f.lower().endswith(IMAGE_EXTENSIONS)]
        return [(p, source) for p in sorted(found)]
    with open(source) as f:
        lines = f.read().splitlines()
    folder = os.path.dirname(source)
    return [(os.path.normpath(os.path.join(folder, line.strip())), f"{source}:{n}")
            for n, line in enumerate(lines, 1) if line.strip()]


def yolo_label_path(image_path: str) -> str:
    """.../images/.../x.jpg -> .../labels/.../x.txt (the last images/ folder; beside the image if none)."""
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return os.path.splitext(labels.join(image_path.rsplit(images, 1)))[0] + ".txt"


def read_yolo_labels(path: str, num_classes: int, skip_unknown: bool = False) -> list:
    """[(normalised xyxy, class id 0..K-1)] of one label file; [] when it is missing or empty."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            row = _parse_row(line, f"{path}:{n}", num_classes, skip_unknown)
            if row is not None:
                rows.append(row)
    return rows


def _parse_row(line: str, where: str, num_classes: int, skip_unknown: bool) -> Optional[tuple]:
    fields = line.split()
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        raise DataError(f"{where}: expected 5 fields (class cx cy w h) or a segment (class x1 y1 x2 y2 x3 y3 "
                        f"...), got {len(fields)}")
    try:
        values = [float(v) for v in fields]
    except ValueError:
        raise DataError(f"{where}: not a number in {line.strip()!r}") from None
    cls, xy = values[0], np.array(values[1:])
    if not 0 <= cls < num_classes or cls != int(cls):
        if not skip_unknown:
            raise DataError(f"{where}: class id {fields[0]} is outside names (0..{num_classes - 1})")
        warn_once(where, f"{where}: skipping object of unknown class id {fields[0]}")
        return None
    if not ((xy >= 0) & (xy <= 1)).all():
        raise DataError(f"{where}: coordinate outside [0, 1] in {line.strip()!r} (YOLO rows are normalised by "
                        "the image size)")
    if len(fields) == 5:
        (cx, cy, w, h) = xy
        return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), int(cls)
    x, y = xy[0::2], xy[1::2]
    return (x.min(), y.min(), x.max(), y.max()), int(cls)
