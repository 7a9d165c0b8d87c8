"""PASCAL VOC average precision, identical to py-faster-rcnn's `voc_eval.py` to the last digit, vectorised.

Shapes: `I` images, `D` detections of one class, `G` ground-truth boxes of one class, `Gm` the most
ground-truth boxes of that class in one image. Inputs use the package convention (xyxy, 0-based,
continuous pixels); the overlap is computed as the devkit does, in its 1-based inclusive pixel
coordinates (x1 + 1, y1 + 1, x2, y2) with widths `x2 - x1 + 1`, and in the same float64 operation order,
so every IoU is bit-identical to `voc_eval`'s.

Matching, per class (the devkit's greedy rule): detections in descending score order; each one takes
the ground-truth box of highest IoU among ALL boxes of its class in its image (matched or not, first on
IoU ties, as np.argmax). If that IoU > thresh (strictly, as voc_eval.py; the MATLAB devkit uses >=):
a difficult box -> ignored (neither TP nor FP), an unmatched box -> TP and now matched, an already
matched box -> FP. Otherwise FP. Recall is over the non-difficult boxes.

Ties in score: a STABLE sort (np.argsort(-scores, kind="stable")), so equal scores keep the order the
detections were given in (image order, then order within the image). voc_eval.py uses
np.argsort(-confidence), an unstable quicksort whose tie order is unspecified.

Vectorisation: since a detection's target box (the argmax) does not depend on earlier matches, the
sequential loop reduces to grouping: among the detections above the threshold whose target is the same
non-difficult box, the first in score order is the TP and the rest are FPs.
"""
from __future__ import annotations

import warnings

import numpy as np

from .errors import EvalError

__all__ = ["voc_ap", "class_pr", "evaluate_voc_arrays"]

_PAIR_BUDGET = 1 << 22  # (detection, gt) pairs per IoU chunk: bounds memory at ~32 MiB per array


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from cumulative recall / precision [D] in score order, exactly as voc_eval.voc_ap.

    use_07_metric: the VOC2007 11-point interpolated AP (max precision at recall >= 0, 0.1, ..., 1);
    otherwise (VOC2010+) the area under the monotone precision envelope.
    """
    rec, prec = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # same thresholds and summation order as the devkit port
            p = np.max(prec[rec >= t]) if np.any(rec >= t) else 0
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the envelope; max is exact, so same as the loop
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _devkit_iou(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Pixel-inclusive IoU of det [..., 4] and gt [..., 4] (devkit coordinates), voc_eval's exact formula."""
    ixmin = np.maximum(gt[..., 0], det[..., 0])
    iymin = np.maximum(gt[..., 1], det[..., 1])
    ixmax = np.minimum(gt[..., 2], det[..., 2])
    iymax = np.minimum(gt[..., 3], det[..., 3])
    iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
    ih = np.maximum(iymax - iymin + 1.0, 0.0)
    inters = iw * ih
    uni = (det[..., 2] - det[..., 0] + 1.0) * (det[..., 3] - det[..., 1] + 1.0) + (
        gt[..., 2] - gt[..., 0] + 1.0
    ) * (gt[..., 3] - gt[..., 1] + 1.0) - inters
    with np.errstate(divide="ignore", invalid="ignore"):
        return inters / uni


def _best_gt(det_img, det_boxes, gt_boxes, gt_start, gt_count) -> tuple:
    """Max IoU [D] and global index [D] of the best gt box in each detection's image (-inf, 0 if none)."""
    d, gm = len(det_img), int(gt_count.max(initial=0))
    ovmax, best = np.full(d, -np.inf), np.zeros(d, np.int64)
    if gm == 0 or d == 0:
        return ovmax, best
    slots = np.arange(gm)
    step = max(1, _PAIR_BUDGET // gm)
    for lo in range(0, d, step):  # chunks only bound memory; each chunk is fully vectorised
        img = det_img[lo:lo + step]
        valid = slots[None, :] < gt_count[img][:, None]  # [d, Gm]
        idx = np.where(valid, gt_start[img][:, None] + slots[None, :], 0)
        iou = _devkit_iou(det_boxes[lo:lo + step, None, :], gt_boxes[idx])
        iou[~valid] = -np.inf
        j = np.argmax(iou, axis=1)  # first index on ties, as voc_eval's np.argmax
        ovmax[lo:lo + step] = iou[np.arange(len(img)), j]
        best[lo:lo + step] = idx[np.arange(len(img)), j]
    return ovmax, best


def class_pr(
    det_img: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_img: np.ndarray,
    gt_boxes: np.ndarray,
    gt_difficult: np.ndarray,
    num_images: int,
    iou_thresh: float = 0.5,
) -> tuple:
    """Cumulative (recall [D], precision [D], npos) of one class, detections in descending score order.

    det_img [D] / gt_img [G]: image indices (gt sorted by image, in annotation order); boxes are in the
    devkit's 1-based coordinates (see `to_devkit`). recall is NaN/inf when npos == 0, as in voc_eval.
    """
    order = np.argsort(-det_scores, kind="stable")
    det_img, det_boxes = det_img[order], det_boxes[order]
    gt_count = np.bincount(gt_img, minlength=num_images)
    gt_start = np.concatenate(([0], np.cumsum(gt_count)[:-1]))
    ovmax, best = _best_gt(det_img, det_boxes, gt_boxes, gt_start, gt_count)
    above = ovmax > iou_thresh  # strictly greater, as voc_eval.py (the MATLAB devkit: >=)
    cand = above & ~gt_difficult[best] if len(gt_boxes) else above
    tp = np.zeros(len(det_img))
    cand_idx = np.flatnonzero(cand)
    _, first = np.unique(best[cand_idx], return_index=True)  # first detection (in score order) per box
    tp[cand_idx[first]] = 1.0
    fp = (~above | cand).astype(np.float64) - tp  # difficult matches are neither
    npos = int(np.count_nonzero(~gt_difficult))
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec, npos


def to_devkit(boxes: np.ndarray) -> np.ndarray:
    """0-based continuous xyxy -> the devkit's 1-based inclusive pixels (x1 + 1, y1 + 1, x2, y2), float64."""
    return np.asarray(boxes, np.float64) + np.array([1.0, 1.0, 0.0, 0.0])


def evaluate_voc_arrays(
    gt: dict,
    dets: dict,
    classes: list,
    num_images: int,
    metric: str = "voc07",
    iou_thresh: float = 0.5,
    return_curves: bool = False,
) -> dict:
    """The VOC metric from flat arrays (see `vggdet.evaluation.evaluate.evaluate_voc` for the dict API).

    gt: img [G], boxes [G, 4], labels [G] in 1..K, difficult [G] (sorted by image);
    dets: img [M], boxes [M, 4], labels [M], scores [M]; boxes 0-based xyxy.
    per_class[name] is None for a class without ground truth (excluded from the mean, with a warning);
    no class with ground truth at all is an EvalError.
    """
    if metric not in ("voc07", "voc10"):
        raise EvalError(f"unknown VOC metric {metric!r} (voc07 or voc10)")
    if len(dets["scores"]) == 0:
        warnings.warn("VOC evaluation: no detections; every AP is 0", stacklevel=2)
    gt_boxes, det_boxes = to_devkit(gt["boxes"]), to_devkit(dets["boxes"])
    per_class: dict = {}
    curves: dict = {}
    for k, name in enumerate(classes, start=1):
        g, d = gt["labels"] == k, dets["labels"] == k
        rec, prec, npos = class_pr(dets["img"][d], det_boxes[d], dets["scores"][d], gt["img"][g],
                                   gt_boxes[g], gt["difficult"][g], num_images, iou_thresh)
        if npos == 0:
            per_class[name] = None
            continue
        per_class[name] = voc_ap(rec, prec, use_07_metric=metric == "voc07")
        curves[name] = {"recall": rec, "precision": prec}
    aps = [ap for ap in per_class.values() if ap is not None]
    if not aps:  # a mean over nothing is not 0.00: the split or the class list is wrong
        raise EvalError(f"no class has (non-difficult) ground truth in the {num_images} test image(s); "
                        f"nothing to evaluate: check the test split and the class names {list(classes)[:5]}")
    missing = [n for n, ap in per_class.items() if ap is None]
    if missing:
        warnings.warn(f"no (non-difficult) ground truth for class(es) {', '.join(missing)}: "
                      "AP is null and excluded from the mean", stacklevel=2)
    out = {"metric": metric, "mAP": float(np.mean(aps)), "per_class": per_class}
    if return_curves:
        out["curves"] = curves
    return out

