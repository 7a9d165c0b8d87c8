"""CSV boxes: a header `image,x1,y1,x2,y2,class`, then one row per box.

Coordinates are pixels, xyxy, 0-based continuous (as inside the package: a box's width is x2 - x1). A row
whose five box and class fields are empty (`a.jpg,,,,,`) marks a background image. Image paths are relative
to the CSV file's folder (or absolute); an image's rows need not be adjacent, images come in the order of
their first row. Sizes come from the image headers (`image_io.cached_image_size`); an image's id is its
path relative to the CSV's folder, without extension.
"""
from __future__ import annotations

import csv
import math
import os
from typing import Callable, Optional

from .base import DetectionDataset, image_sizes, named_record, path_ids
from .errors import DataError

__all__ = ["CSVDetection", "read_csv_boxes", "csv_class_names", "CSV_HEADER"]

CSV_HEADER = ["image", "x1", "y1", "x2", "y2", "class"]


class CSVDetection(DetectionDataset):
    """One split's CSV file. `classes`: a list, or None = the sorted class names in this file (the loader
    gives the test split the train split's names)."""

    def __init__(
        self,
        csv_path: str,
        classes: Optional[list] = None,
        skip_bad_images: bool = False,
        skip_unknown_classes: bool = False,
        transform: Optional[Callable] = None,
        proposals: Optional[dict] = None,
    ) -> None:
        super().__init__(skip_bad_images=skip_bad_images, transform=transform, proposals=proposals)
        images = read_csv_boxes(csv_path)  # image path -> [(where, box or None, class or None)]
        self.classes = list(classes) if classes is not None else _names(images)
        index = {c: k + 1 for k, c in enumerate(self.classes)}
        sizes = image_sizes(list(images), [rows[0][0] for rows in images.values()], skip_bad=skip_bad_images)
        kept = [(p, s) for p, s in zip(images, sizes) if s is not None]  # unreadable: skipped
        self.image_paths = [p for p, _ in kept]
        self.image_ids = path_ids(self.image_paths, os.path.dirname(os.path.abspath(csv_path)), csv_path)
        self.records = [named_record(i, images[p], s, index, skip_unknown_classes)
                        for i, (p, s) in zip(self.image_ids, kept)]
        self._finish_init(csv_path)


def csv_class_names(csv_path: str) -> list:
    """The sorted class names in a CSV file (the class list when data.classes is not given)."""
    return _names(read_csv_boxes(csv_path))


def _names(images: dict) -> list:
    return sorted({name for rows in images.values() for _, box, name in rows if box is not None})


def read_csv_boxes(path: str) -> dict:
    """{absolute image path: [(file:line, (x1, y1, x2, y2) or None, class name or None)]}."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: CSV file not found (expected the header {','.join(CSV_HEADER)} and one row "
                        "per box)")
    folder = os.path.dirname(os.path.abspath(path))
    images: dict = {}
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header != CSV_HEADER:
            raise DataError(f"{path}:1: expected the header {','.join(CSV_HEADER)}, got {','.join(header)!r}")
        for row in reader:
            if any(field.strip() for field in row):  # blank lines are fine
                where = f"{path}:{reader.line_num}"
                image, box, name = _parse_row(row, where)
                images.setdefault(os.path.normpath(os.path.join(folder, image)), []).append((where, box, name))
    if not images:
        raise DataError(f"{path}: no rows after the header (one row per box: {','.join(CSV_HEADER)})")
    return images


def _parse_row(row: list, where: str) -> tuple:
    if len(row) != len(CSV_HEADER):
        raise DataError(f"{where}: expected {len(CSV_HEADER)} fields ({','.join(CSV_HEADER)}), got {len(row)}")
    image, *rest = (field.strip() for field in row)
    if not image:
        raise DataError(f"{where}: the image field is empty")
    if not any(rest):
        return image, None, None  # a background image
    if not all(rest):
        raise DataError(f"{where}: a box row needs x1, y1, x2, y2 and class (leave all five empty for a "
                        "background image)")
    try:
        box = tuple(float(v) for v in rest[:4])
    except ValueError:
        raise DataError(f"{where}: not a number in {','.join(rest[:4])!r}") from None
    if not all(math.isfinite(v) for v in box):
        raise DataError(f"{where}: coordinates must be finite, got {','.join(rest[:4])!r}")
    return image, box, rest[4]
