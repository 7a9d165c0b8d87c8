"""COCO layout via pycocotools: contiguous labels 1..K <-> COCO's sparse category ids.

`label_to_cat_id[k]` is the COCO category id of label k (index 0 = background, None); `cat_id_to_label`
maps back. COCO boxes are [x, y, w, h] in 0-based continuous pixels -> xyxy (x, y, x + w, y + h).
Crowd boxes are kept in `get_annotation` (flagged iscrowd) for evaluation, never as training targets.
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import Callable, Optional

import numpy as np

from .base import DetectionDataset
from .errors import DataError

__all__ = ["COCODetection", "load_coco"]


def load_coco(ann_file: str):
    """pycocotools COCO object; DataError naming the file when it is missing or not COCO JSON."""
    from pycocotools.coco import COCO

    if not os.path.isfile(ann_file):
        raise DataError(f"{ann_file}: annotation file not found (expected a COCO instances JSON)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            return COCO(ann_file)
    except Exception as e:
        raise DataError(f"{ann_file}: cannot load COCO annotations ({type(e).__name__}: {e})") from None


class COCODetection(DetectionDataset):
    """COCO images and annotations. train=True drops images without usable (non-crowd, non-degenerate)
    boxes when skip_empty; train=False keeps every image. Image ids are COCO's int ids."""

    def __init__(
        self,
        root_images_dir: str,
        ann_file: str,
        train: bool = True,
        skip_empty: bool = True,
        skip_bad_images: bool = False,
        transform: Optional[Callable] = None,
        proposals: Optional[dict] = None,
    ) -> None:
        super().__init__(use_difficult=False, skip_bad_images=skip_bad_images, transform=transform,
                         proposals=proposals)
        self.coco = load_coco(ann_file)
        cat_ids = sorted(self.coco.getCatIds())
        self.classes = [self.coco.cats[c]["name"] for c in cat_ids]
        self.label_to_cat_id = [None] + cat_ids
        self.cat_id_to_label = {c: k + 1 for k, c in enumerate(cat_ids)}
        ids = sorted(self.coco.getImgIds())
        if not ids:
            raise DataError(f"{ann_file}: the annotation file lists no images")
        self.records = [self._record(i) for i in ids]
        self.image_ids = ids
        self.image_paths = [os.path.join(root_images_dir, self.coco.imgs[i]["file_name"]) for i in ids]
        self._finish_init(ann_file)
        if train and skip_empty:
            self.drop_background()

    def _record(self, image_id: int) -> dict:
        info = self.coco.imgs[image_id]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if len(a.get("bbox", [])) == 4]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        h, w = info.get("height"), info.get("width")
        return {
            "boxes": boxes,
            "labels": np.array([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64),
            "difficult": np.zeros(len(anns), dtype=bool),
            "iscrowd": np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
            "image_id": image_id,
            "size": (int(h), int(w)) if h and w else None,
        }
