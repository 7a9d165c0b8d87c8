"""The evaluation entry points: `evaluate(dataset, detections, metric)` for training and tools/test_det.py,
`evaluate_voc` for any ground truth, and `format_table` for printing.

Metrics dict: {"metric": "voc07" | "voc10" | "coco", "mAP": float, "per_class": {name: AP or None}} and,
for COCO, "stats" with the 12 COCOeval numbers. A class without (non-difficult) ground truth gets None
(JSON null): it is excluded from the mean, with a warning.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from .coco import COCO_STATS, coco_from_annotations, evaluate_coco
from .errors import EvalError
from .results import Detections, flatten_detections, write_coco_results, write_voc_results
from .voc import evaluate_voc_arrays

__all__ = ["evaluate", "evaluate_voc", "ground_truth_arrays", "format_table"]

METRICS = ("voc07", "voc10", "coco")


def _annotations(dataset_or_gt) -> tuple:
    """(list of per-image annotation dicts, image ids) from a dataset or a list of gt dicts."""
    if hasattr(dataset_or_gt, "get_annotation"):
        anns = [dataset_or_gt.get_annotation(i) for i in range(len(dataset_or_gt))]
        return anns, list(dataset_or_gt.image_ids)
    anns = list(dataset_or_gt)
    return anns, [a.get("image_id", i) for i, a in enumerate(anns)]


def ground_truth_arrays(annotations: Sequence[Mapping]) -> dict:
    """Per-image gt dicts -> flat img [G], boxes [G, 4] float64 0-based, labels [G], difficult [G].

    Crowd boxes (COCO iscrowd) count as difficult: ignored by the VOC metric, as COCOeval ignores them.
    """
    parts: dict = {"img": [], "boxes": [], "labels": [], "difficult": []}
    for n, a in enumerate(annotations):
        boxes = np.asarray(a["boxes"], np.float64).reshape(-1, 4)
        zeros = np.zeros(len(boxes), bool)
        parts["img"].append(np.full(len(boxes), n, np.int64))
        parts["boxes"].append(boxes)
        parts["labels"].append(np.asarray(a["labels"], np.int64).reshape(-1))
        parts["difficult"].append(np.asarray(a.get("difficult", zeros), bool).reshape(-1)
                                  | np.asarray(a.get("iscrowd", zeros), bool).reshape(-1))
    if not annotations:
        return {"img": np.zeros(0, np.int64), "boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64),
                "difficult": np.zeros(0, bool)}
    return {k: np.concatenate(v) for k, v in parts.items()}


def evaluate_voc(
    dataset_or_gt,
    detections: Detections,
    classes: Optional[Sequence[str]] = None,
    metric: str = "voc07",
    iou_thresh: float = 0.5,
    return_curves: bool = False,
) -> dict:
    """VOC AP per class and mAP, identical to py-faster-rcnn's voc_eval (see vggdet/evaluation/voc.py).

    dataset_or_gt: a dataset (`get_annotation`, `image_ids`, `classes`) or a list of per-image dicts
    (boxes [G, 4] 0-based xyxy, labels [G] in 1..K, difficult [G], optional iscrowd, image_id).
    detections: a list aligned with it or a dict keyed by image id (see vggdet/evaluation/results.py).
    return_curves adds "curves": {name: {"recall", "precision"}} (numpy arrays, not JSON).
    """
    if classes is None:
        classes = getattr(dataset_or_gt, "classes", None)
        if classes is None:
            raise EvalError("evaluate_voc: give `classes` when the ground truth is a plain list")
    anns, image_ids = _annotations(dataset_or_gt)
    gt = ground_truth_arrays(anns)
    dets = flatten_detections(detections, image_ids, len(classes))
    return evaluate_voc_arrays(gt, dets, list(classes), len(anns), metric, iou_thresh, return_curves)


def evaluate(
    dataset,
    detections: Detections,
    metric: str = "voc07",
    iou_thresh: float = 0.5,
    out_dir: Optional[Union[str, os.PathLike]] = None,
) -> dict:
    """Score detections (a list aligned with `dataset`) and return the metrics dict.

    With out_dir, also writes the devkit files `comp4_det_<split>_<class>.txt` and, for COCO datasets
    (those with `.coco`), `coco_results.json`. The COCO metric on a non-COCO dataset (e.g. VOC) uses
    an in-memory COCO built from its annotations.
    """
    if metric not in METRICS:
        raise EvalError(f"unknown metric {metric!r} (one of {', '.join(METRICS)})")
    is_coco = hasattr(dataset, "coco")
    if out_dir is not None:
        split = str(getattr(dataset, "split", "test"))
        write_voc_results(str(out_dir), split, dataset.classes, dataset.image_ids, detections)
        if is_coco:
            write_coco_results(os.path.join(str(out_dir), "coco_results.json"), detections,
                               dataset.image_ids, dataset.label_to_cat_id)
    if metric != "coco":
        return evaluate_voc(dataset, detections, dataset.classes, metric, iou_thresh)
    if is_coco:
        return evaluate_coco(dataset.coco, detections, dataset.image_ids, dataset.label_to_cat_id)
    anns, _ = _annotations(dataset)
    coco = coco_from_annotations(anns, dataset.classes)
    identity = {k: k for k in range(1, len(dataset.classes) + 1)}
    return evaluate_coco(coco, list(detections), list(range(1, len(anns) + 1)), identity)


def format_table(metrics: Mapping) -> str:
    """Per-class AP (in %) and the mean, plus COCO's 12 stats when present; no-GT classes show 'n/a'."""
    per_class = metrics.get("per_class") or {}
    width = max([len(n) for n in per_class] + [12])
    metric = metrics.get("metric", "")
    label = "AP@[.5:.95]" if metric == "coco" else "AP"
    lines = [f"{'class':<{width}}  {label + ' (%)':>15}", "-" * (width + 17)]
    for name, ap in per_class.items():
        lines.append(f"{name:<{width}}  {'n/a (no GT)' if ap is None else f'{100 * ap:.2f}':>15}")
    lines.append("-" * (width + 17))
    lines.append(f"{'mAP (' + metric + ')':<{width}}  {100 * metrics['mAP']:>15.2f}")
    if "stats" in metrics:
        lines.append("")
        lines += [f"{k:<{width}}  {100 * metrics['stats'][k]:>15.2f}" for k in COCO_STATS if k in metrics["stats"]]
    return "\n".join(lines)
