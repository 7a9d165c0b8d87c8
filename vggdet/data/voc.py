"""Pascal VOC layout: Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/<split>.txt.

VOC boxes are 1-based inclusive pixel indices; they are converted here, once, to 0-based continuous xyxy:
(xmin - 1, ymin - 1, xmax, ymax). A box written with xmax <= xmin or ymax <= ymin (a click, not a drag, as in
two BCCD files) has zero area as annotated and is dropped as degenerate.
"""
from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from typing import Callable, Optional, Union

import numpy as np

from .base import DetectionDataset
from .errors import DataError

__all__ = ["VOCDetection", "VOC_CLASSES", "parse_voc_xml"]

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip


class VOCDetection(DetectionDataset):
    """One VOC-style folder and split. `classes`: None = the 20 VOC classes, a list, or "auto" (sorted
    names found in this split's XML files). Label k <-> classes[k - 1]; image ids are the file stems."""

    def __init__(
        self,
        root: str,
        split: str,
        classes: Optional[Union[list, str]] = None,
        use_difficult: bool = False,
        skip_bad_images: bool = False,
        skip_unknown_classes: bool = False,
        transform: Optional[Callable] = None,
        proposals: Optional[dict] = None,
    ) -> None:
        super().__init__(use_difficult=use_difficult, skip_bad_images=skip_bad_images, transform=transform,
                         proposals=proposals)
        self.root, self.split = root, split
        self.image_ids = read_split(root, split)
        objects = [parse_voc_xml(os.path.join(root, "Annotations", f"{i}.xml")) for i in self.image_ids]
        if classes is None:
            classes = VOC_CLASSES
        elif classes == "auto":
            classes = sorted({o["name"] for ann in objects for o in ann["objects"]})
        self.classes = list(classes)
        index = {c: k + 1 for k, c in enumerate(self.classes)}
        self.image_paths = [_image_path(root, i, a["filename"]) for i, a in zip(self.image_ids, objects)]
        self.records = [self._record(i, a, index, skip_unknown_classes) for i, a in zip(self.image_ids, objects)]
        self._finish_init(f"{root} [{split}]")

    def _record(self, image_id: str, ann: dict, index: dict, skip_unknown: bool) -> dict:
        objs = []
        for o in ann["objects"]:
            if o["name"] not in index:
                if not skip_unknown:
                    raise DataError(f"{ann['path']}: class {o['name']!r} is not in classes {self.classes}")
                warnings.warn(f"{ann['path']}: skipping object of unknown class {o['name']!r}", stacklevel=2)
                continue
            objs.append(o)
        raw = np.array([o["bbox"] for o in objs], dtype=np.float32).reshape(-1, 4)
        boxes = raw - np.array([1, 1, 0, 0], dtype=np.float32)  # 1-based inclusive -> 0-based continuous
        return {
            "boxes": boxes,
            "labels": np.array([index[o["name"]] for o in objs], dtype=np.int64),
            "difficult": np.array([o["difficult"] for o in objs], dtype=bool),
            "iscrowd": np.zeros(len(objs), dtype=bool),
            "valid": (raw[:, 2] > raw[:, 0]) & (raw[:, 3] > raw[:, 1]),
            "image_id": image_id,
            "size": ann["size"],
        }


def read_split(root: str, split: str) -> list:
    path = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(path):
        raise DataError(f"{path}: split file not found (expected one image id per line for split {split!r})")
    with open(path) as f:
        # Some ImageSets files carry a second column (per-class lists: "<id> 1"); the id is the first token.
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise DataError(f"{path}: the split is empty (no image ids); list one image id per line")
    return ids


def parse_voc_xml(path: str) -> dict:
    """{path, filename, size (h, w) or None, objects: [{name, bbox (1-based VOC ints), difficult}]}."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: annotation file not found (expected a VOC XML for this image id)")
    try:
        root = ET.parse(path).getroot()
        size = root.find("size")
        hw = None
        if size is not None and size.findtext("width") and size.findtext("height"):
            hw = (int(float(size.findtext("height"))), int(float(size.findtext("width"))))
            hw = hw if hw[0] > 0 and hw[1] > 0 else None  # some tools write 0 x 0: read the header instead
        objects = [_parse_object(o) for o in root.findall("object")]
    except (ET.ParseError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: malformed VOC XML ({type(e).__name__}: {e})") from None
    return {"path": path, "filename": root.findtext("filename"), "size": hw, "objects": objects}


def _parse_object(obj: ET.Element) -> dict:
    bb = obj.find("bndbox")
    bbox = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
    difficult = obj.findtext("difficult")
    return {
        "name": obj.findtext("name").strip(),
        "bbox": bbox,
        "difficult": bool(int(float(difficult))) if difficult and difficult.strip() else False,
    }


def _image_path(root: str, image_id: str, filename: Optional[str]) -> str:
    """JPEGImages/<id>.jpg, else the XML's <filename>, else any <id>.* (PNG datasets)."""
    folder = os.path.join(root, "JPEGImages")
    for name in (f"{image_id}.jpg", filename, f"{image_id}.png", f"{image_id}.jpeg"):
        if name and os.path.isfile(os.path.join(folder, os.path.basename(name))):
            return os.path.join(folder, os.path.basename(name))
    return os.path.join(folder, f"{image_id}.jpg")  # reading it raises a DataError naming this path
