"""COCO bbox metric: pycocotools' COCOeval, unchanged, plus a per-class AP@[.5:.95] read from its tables.

`coco_from_annotations` turns any dataset's ground truth (e.g. VOC) into an in-memory COCO object so the
COCO metric works there too; difficult boxes become iscrowd=1, COCOeval's only "ignore" flag.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from .errors import EvalError
from .results import _check_coco_entry, coco_results, read_coco_results

__all__ = ["evaluate_coco", "coco_from_annotations", "COCO_STATS"]

# The order of COCOeval.stats (summarize()).
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _quiet(verbose: bool):
    # pycocotools prints progress and the summary table; the tools print their own table instead.
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def evaluate_coco(
    coco_gt,
    results: Union[str, list],
    image_ids: Optional[Sequence] = None,
    label_to_cat_id: Optional[Union[Mapping, Sequence]] = None,
    verbose: bool = False,
) -> dict:
    """COCOeval (bbox) -> {"metric": "coco", "mAP": AP@[.5:.95], "stats": {12 named stats}, "per_class"}.

    results: a results JSON path, a list of COCO result dicts, or per-image detections aligned with
    `image_ids` (then `label_to_cat_id` maps labels 1..K to category ids). Images evaluated: `image_ids`
    when given, else all of coco_gt's (COCOeval's default). per_class[name] is None without ground truth.
    """
    gt_imgs, gt_cats = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    if isinstance(results, (str, os.PathLike)):
        results = read_coco_results(str(results), gt_imgs, gt_cats)
    elif isinstance(results, Mapping) or (len(results) and "category_id" not in results[0]):
        if image_ids is None or label_to_cat_id is None:
            raise EvalError("evaluate_coco: per-image detections need image_ids and label_to_cat_id")
        results = coco_results(results, image_ids, label_to_cat_id)
    else:
        for n, r in enumerate(results):
            _check_coco_entry(r, f"results: entry {n}", gt_imgs, gt_cats)
    img_ids = sorted(gt_imgs) if image_ids is None else [int(i) for i in image_ids]
    if not results:
        warnings.warn("COCO evaluation: no detections; every stat is 0", stacklevel=2)
        return _pack(np.zeros(len(COCO_STATS)), {_cat_name(coco_gt, c): 0.0 for c in sorted(gt_cats)})
    return _run_cocoeval(coco_gt, results, img_ids, verbose)


def _run_cocoeval(coco_gt, results: list, img_ids: list, verbose: bool) -> dict:
    from pycocotools.cocoeval import COCOeval

    with _quiet(verbose):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds keys to the dicts it gets
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    per_class = {}
    for k, cat in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]  # [T iou, R recall] at area "all", maxDets 100
        p = p[p > -1]
        per_class[_cat_name(coco_gt, cat)] = float(np.mean(p)) if p.size else None
    return _pack(ev.stats, per_class)


def _cat_name(coco_gt, cat_id: int) -> str:
    return str(coco_gt.cats[cat_id].get("name", cat_id))


def _pack(stats: np.ndarray, per_class: dict) -> dict:
    named = {k: float(v) for k, v in zip(COCO_STATS, stats)}
    return {"metric": "coco", "mAP": named["AP"], "stats": named, "per_class": per_class}


def coco_from_annotations(annotations: Sequence[Mapping], classes: Sequence[str]):
    """A pycocotools COCO built from per-image annotations (boxes 0-based xyxy, labels 1..K, difficult,
    iscrowd, orig_size); image ids are 1..N (dataset index + 1), category ids are the labels."""
    from pycocotools.coco import COCO

    images, anns = [], []
    for n, a in enumerate(annotations, start=1):
        h, w = a.get("orig_size", (0, 0))
        images.append({"id": n, "height": int(h), "width": int(w)})
        boxes = np.asarray(a["boxes"], np.float64).reshape(-1, 4)
        crowd = np.asarray(a.get("difficult", np.zeros(len(boxes), bool)), bool) | np.asarray(
            a.get("iscrowd", np.zeros(len(boxes), bool)), bool)
        for box, label, c in zip(boxes.tolist(), np.asarray(a["labels"]).tolist(), crowd.tolist()):
            x, y, bw, bh = box[0], box[1], box[2] - box[0], box[3] - box[1]
            anns.append({"id": len(anns) + 1, "image_id": n, "category_id": int(label),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": int(c)})
    cats = [{"id": k, "name": name} for k, name in enumerate(classes, start=1)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": cats}
    with _quiet(False):
        coco.createIndex()
    return coco
