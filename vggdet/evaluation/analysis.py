"""Why a detector misses: TIDE's error breakdown, a confusion matrix, AP by object size, PR-curve data.

A mAP says a detector is weak, not why. TIDE (Bolya et al., "TIDE: A General Toolbox for Identifying Object
Detection Errors", ECCV 2020) sorts every false positive and missed box into one of six error types and
reports, for each, how much AP an oracle that fixes only that type would add (dAP). Pure numpy; the figures
and the HTML page are in report.py. Everything here is in AP points (0-100), like TIDE's own summary.

Shapes and conventions: `G` ground-truth boxes, `M` detections, `K` classes (labels 1..K); boxes xyxy, 0-based
continuous pixels. IoU is the continuous one (COCO's and TIDE's; on VOC data it equals the devkit's
pixel-inclusive IoU of the 1-based boxes, see voc.py).

Matching (TIDE's, which is COCO's). Per image, at most `max_dets` = 100 detections, the highest-scoring
(COCO's maxDets, TIDE's default; the rest are dropped), in descending score order (stable: equal scores keep
the order they were given in). Each takes the unmatched box of its class with the highest IoU (the first on
ties) if that IoU >= fg_iou = 0.5 (>=, as TIDE and COCO; the VOC devkit needs > 0.5): a true positive.
Ignored boxes (VOC `difficult`, COCO `iscrowd`) are not matched; an unmatched detection that overlaps an
ignored box of its class by more than fg_iou is ignored: neither TP nor FP, as the devkit does with
difficult boxes (overlap = IoU) and COCOeval with crowds (overlap = intersection / detection area). Normal
boxes are tried first (COCOeval's order; voc_eval.py lets a difficult box of higher IoU win).

Errors of a false positive, tested in this order (the paper's definitions; the order is tidecv's, which
settles a detection that fits two definitions):
  Loc   bg_iou (0.1) <= highest IoU with a box of its class <= fg_iou (that box, matched or not)
  Cls   IoU >= fg_iou with a box of another class
  Dupe  IoU >= fg_iou with a box of its class that a higher-scoring detection matched
  Bkg   IoU <= bg_iou with every box (so every FP in an image without ground truth)
  Both  the rest: wrong class, and bg_iou < IoU < fg_iou with a box of another class
  Miss  (a box) not matched, and no Cls or Loc error points at it
Oracles, each applied alone to the original detections (dAP = oracle AP - AP):
  Cls, Loc  the highest-scoring Cls-or-Loc error on an unmatched box is the one that may claim it (tidecv's
            BestGTMatch, shared by the two types): fixing type T turns the T errors that claim their box
            into TPs (Cls: in the box's class) and removes the other T errors. So a box claimed by a Loc
            error gains nothing from the Cls oracle.
  Both, Dupe, Bkg  remove those detections.   Miss  remove those boxes from the ground truth.
  FalsePos  remove every FP (perfect precision).   FalseNeg  remove every unmatched box (perfect recall).
  The six main dAPs are clamped at 0 as in tidecv (fixing cannot hurt; 101-point binning can).
  Ignored detections are classified too, as in tidecv: one that would be a Loc / Cls error claims its box
  like any other (so that box is no Miss) and its oracle adds it as a TP; the error counts and the gallery
  leave ignored detections out (they are not false positives).
AP: per class at IoU 0.5 with COCO's 101-point interpolation (recall thresholds np.linspace(0, 1, 101), as
COCOeval); the mean is over the classes with (non-ignored) ground truth, COCOeval's and the devkit's rule.
After the Miss / FalseNeg oracles a class left without ground truth scores 0 if it still has detections
and leaves the mean if it has none (tidecv's rule).
Where this differs from tidecv 1.0.1: classes with detections but no ground truth are left out of the mean
(tidecv scores them 0); the recall thresholds are COCOeval's linspace (tidecv: i / 100), which moves dAPs
by < 0.01 points (tested: all numbers within 0.1 points on COCO128 with crowd boxes).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from .errors import EvalError
from .evaluate import ground_truth_arrays
from .results import Detections, flatten_detections

__all__ = ["analyze", "ground_truth", "box_iou", "ap101", "ERROR_TYPES", "SPECIAL_TYPES", "SIZES"]

ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
SPECIAL_TYPES = ("FalsePos", "FalseNeg")
CLS, LOC, BOTH, DUPE, BKG = 1, 2, 3, 4, 5  # a detection's error code (its index in ERROR_TYPES + 1); 0 = TP
SIZES = {"small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, 1e10)}  # COCO
RECALLS = np.linspace(0.0, 1.0, 101)  # COCOeval's recThrs


def box_iou(a: np.ndarray, b: np.ndarray, crowd: Optional[np.ndarray] = None) -> np.ndarray:
    """IoU [A, B] of boxes a [A, 4] and b [B, 4]; where crowd [B] is set, intersection / area of a (COCO)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    union = area_a[:, None] + ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :] - inter
    if crowd is not None:
        union = np.where(crowd[None, :], area_a[:, None], union)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def ap101(tp: np.ndarray, npos: int) -> tuple:
    """(AP, interpolated precision [101]) of one class from TP flags [D] in descending score order, as
    COCOeval: the precision envelope read at the first detection whose recall reaches each threshold."""
    tpc = np.cumsum(tp)
    rec = tpc / float(npos)
    prec = tpc / np.arange(1, len(tp) + 1)
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    idx = np.searchsorted(rec, RECALLS, side="left")
    q = np.zeros(len(RECALLS))
    q[idx < len(prec)] = prec[idx[idx < len(prec)]]
    return float(q.mean()), q


def ground_truth(annotations: Sequence) -> dict:
    """Per-image gt dicts -> img [G], boxes [G, 4], labels [G], ignore [G] (difficult or crowd), crowd [G],
    area [G] (box area: the size rule for VOC and COCO alike)."""
    gt = ground_truth_arrays(annotations)
    crowd = [np.asarray(a.get("iscrowd", np.zeros(len(a["labels"]))), bool).reshape(-1) for a in annotations]
    b = gt["boxes"]
    return {"img": gt["img"], "boxes": b, "labels": gt["labels"], "ignore": gt["difficult"],
            "crowd": np.concatenate(crowd) if crowd else np.zeros(0, bool), "once": np.zeros(len(b), bool),
            "area": (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])}


def _cap(dets: dict, max_dets: int) -> tuple:
    """Detections sorted by image, then score descending (stable); at most max_dets per image."""
    order = np.lexsort((-dets["scores"], dets["img"]))
    d = {k: v[order] for k, v in dets.items()}
    rank = np.arange(len(order)) - np.searchsorted(d["img"], d["img"], side="left")
    keep = rank < max_dets
    return {k: v[keep] for k, v in d.items()}, int((~keep).sum())


# ------------------------------------------------------------------------------------------ matching
def _match_image(db, dl, gb, gl, ignore, crowd, once, fg: float) -> tuple:
    """One image, detections in score order: (box index [D] each matched, -1 if none; ignored [D]).
    An unmatched detection is ignored when it overlaps an ignored box of its class by > fg; a `once` box
    (one ignored only for its size, see _by_size) absorbs one detection, as COCOeval's areaRng does."""
    match = np.full(len(db), -1, np.int64)
    pos, ign = np.flatnonzero(~ignore), np.flatnonzero(ignore)
    iou = box_iou(db, gb[pos]) * (dl[:, None] == gl[pos][None, :])
    used = np.zeros(len(pos), bool)
    for d in np.flatnonzero((iou >= fg).any(1)):  # greedy: needs the loop, but only over candidates
        row = np.where(used, 0.0, iou[d])
        j = int(row.argmax())
        if row[j] >= fg:
            match[d], used[j] = pos[j], True
    ignored = np.zeros(len(db), bool)
    if len(ign):
        ov = box_iou(db, gb[ign], crowd[ign]) * (dl[:, None] == gl[ign][None, :])
        taken = np.zeros(len(ign), bool)  # `once` boxes absorb one detection each, the others any number
        for d in np.flatnonzero((match < 0) & (ov > fg).any(1)):
            row = np.where(taken, 0.0, ov[d])
            j = int(row.argmax())
            ignored[d], taken[j] = row[j] > fg, taken[j] | (once[ign[j]] and row[j] > fg)
    return match, ignored


def _classify_image(db, dl, gb, gl, ignore, match, ignored, fg: float, bg: float) -> tuple:
    """One image: (error code [D], the box index [D] each error is about or -1), TIDE's order."""
    fp = match < 0  # the ignored detections too: tidecv's oracles use their errors (see the top)
    pos = np.flatnonzero(~ignore)
    if not len(pos) or not fp.any():
        return np.where(fp, BKG, 0), np.full(len(db), -1, np.int64)
    iou = box_iou(db, gb[pos])
    same = dl[:, None] == gl[pos][None, :]
    used = np.isin(pos, match)[None, :]
    cands = [iou * same, iou * ~same, iou * same * used, iou]
    best = [c.argmax(1) for c in cands]
    top = [c[np.arange(len(db)), j] for c, j in zip(cands, best)]
    conds = [(top[0] >= bg) & (top[0] <= fg), top[1] >= fg, top[2] >= fg, top[3] <= bg]
    err = np.where(fp, np.select(conds, [LOC, CLS, DUPE, BKG], BOTH), 0)
    target = np.select(conds, [pos[best[0]], pos[best[1]], pos[best[2]], -1], pos[best[3]])
    return err, np.where(fp, target, -1)


def _match_all(gt: dict, dets: dict, num_images: int, fg: float, bg: Optional[float] = None,
               progress: bool = False) -> dict:
    """Match every image; with bg, also classify the errors. Indices into the flat gt / detection arrays."""
    gs = np.searchsorted(gt["img"], np.arange(num_images + 1))
    ds = np.searchsorted(dets["img"], np.arange(num_images + 1))
    m = len(dets["scores"])
    out = {"match": np.full(m, -1, np.int64), "ignored": np.zeros(m, bool), "err": np.zeros(m, np.int64),
           "target": np.full(m, -1, np.int64)}
    for i in tqdm(np.flatnonzero(np.diff(ds)), desc="analyze", unit="img", disable=not progress,
                  dynamic_ncols=True):
        (d0, d1), (g0, g1) = ds[i:i + 2], gs[i:i + 2]
        args = (dets["boxes"][d0:d1], dets["labels"][d0:d1], gt["boxes"][g0:g1], gt["labels"][g0:g1],
                gt["ignore"][g0:g1])
        match, ignored = _match_image(*args, gt["crowd"][g0:g1], gt["once"][g0:g1], fg)
        out["match"][d0:d1] = np.where(match >= 0, match + g0, -1)
        out["ignored"][d0:d1] = ignored
        if bg is not None:
            err, target = _classify_image(*args, match, ignored, fg, bg)
            out["err"][d0:d1], out["target"][d0:d1] = err, np.where(target >= 0, target + g0, -1)
    return out


# ------------------------------------------------------------------------------------------ AP and oracles
def _class_aps(labels, scores, tp, keep, npos, counted, k: int) -> tuple:
    """Per-class AP [K] (NaN: not in the mean) and interpolated precision [K, 101] of the kept detections."""
    order = np.lexsort((-scores[keep], labels[keep]))  # by class, then score; ties keep image order (COCOeval)
    lab, flags = labels[keep][order], tp[keep][order]
    bounds = np.searchsorted(lab, np.arange(1, k + 2))
    aps, curves = np.full(k, np.nan), np.zeros((k, len(RECALLS)))
    for c in np.flatnonzero(counted[1:]) + 1:
        t = flags[bounds[c - 1]:bounds[c]]
        if npos[c] > 0:
            aps[c - 1], curves[c - 1] = ap101(t, int(npos[c]))
        elif len(t):
            aps[c - 1] = 0.0  # no ground truth left (Miss / FalseNeg oracle) but detections: tidecv's 0
    return aps, curves


def _mean(aps: np.ndarray) -> float:
    return float(np.nanmean(aps)) if np.isfinite(aps).any() else 0.0  # nothing left to average: 0


def _oracles(gt: dict, dets: dict, st: dict, k: int) -> tuple:
    """{type: (labels, tp, keep, npos)} for the original ("AP50") and each oracle; and the Miss mask [G]."""
    tp, valid = st["match"] >= 0, ~st["ignored"]  # ignored detections may still be Cls / Loc claimers
    gt_used = np.zeros(len(gt["labels"]), bool)
    gt_used[st["match"][tp]] = True
    claim = np.flatnonzero(np.isin(st["err"], (CLS, LOC)))
    claim = claim[~gt_used[st["target"][claim]]]
    _, first = np.unique(st["target"][claim], return_index=True)  # first in score order = highest score
    best = np.zeros(len(tp), bool)
    best[claim[first]] = True
    miss = ~gt["ignore"] & ~gt_used
    miss[st["target"][claim]] = False
    npos = np.bincount(gt["labels"][~gt["ignore"]], minlength=k + 1)
    runs = {"AP50": (dets["labels"], tp, valid, npos)}
    for code in (CLS, LOC):
        sel = st["err"] == code
        labels = dets["labels"].copy()
        if code == CLS:
            labels[sel & best] = gt["labels"][st["target"][sel & best]]
        runs[ERROR_TYPES[code - 1]] = (labels, tp | (sel & best), (valid & ~sel) | (sel & best), npos)
    for code in (BOTH, DUPE, BKG):
        runs[ERROR_TYPES[code - 1]] = (dets["labels"], tp, valid & (st["err"] != code), npos)
    runs["Miss"] = (dets["labels"], tp, valid, npos - np.bincount(gt["labels"][miss], minlength=k + 1))
    runs["FalsePos"] = (dets["labels"], tp, valid & tp, npos)
    runs["FalseNeg"] = (dets["labels"], tp, valid, np.bincount(dets["labels"][tp], minlength=k + 1))
    return runs, miss


def _tide(gt: dict, dets: dict, st: dict, classes: list) -> tuple:
    """(tide {AP50, 6 main + 2 special dAPs}, counts, per_class, PR precision [K, 101], Miss mask [G])."""
    k = len(classes)
    runs, miss = _oracles(gt, dets, st, k)
    counted = runs["AP50"][3] > 0
    aps = {name: _class_aps(lab, dets["scores"], tp, keep, npos, counted, k)
           for name, (lab, tp, keep, npos) in runs.items()}
    base, curves = aps["AP50"]
    tide = {"AP50": 100 * _mean(base)}
    for name in ERROR_TYPES + SPECIAL_TYPES:
        delta = 100 * (_mean(aps[name][0]) - _mean(base))
        tide[name] = max(delta, 0.0) if name in ERROR_TYPES else delta
    err = np.where(st["ignored"], 0, st["err"])  # counted: false positives only
    counts = {name: int(np.sum(err == c)) for c, name in enumerate(ERROR_TYPES[:5], start=1)}
    counts["Miss"] = int(miss.sum())
    per_class = {}
    for c, name in enumerate(classes):
        n_err = {e: int(np.sum((err == j) & (dets["labels"] == c + 1)))
                 for j, e in enumerate(ERROR_TYPES[:5], start=1)}
        n_err["Miss"] = int(np.sum(miss & (gt["labels"] == c + 1)))
        ok = bool(counted[c + 1])
        per_class[name] = {
            "AP50": 100 * float(base[c]) if ok else None, "num_gt": int(runs["AP50"][3][c + 1]),
            "num_det": int(np.sum(~st["ignored"] & (dets["labels"] == c + 1))), "errors": n_err,
            "dAP": {e: max(100 * float(np.nan_to_num(aps[e][0][c]) - base[c]), 0.0) if ok else None
                    for e in ERROR_TYPES}}
    return tide, counts, per_class, curves, miss


# ------------------------------------------------------------------------------- confusion, sizes, gallery
def _cross_class(gt: dict, dets: dict, gt_left: np.ndarray, det_left: np.ndarray, fg: float) -> list:
    """(box, detection) pairs: left-over detections, in score order, each take the left-over box of any
    class with the highest IoU >= fg in their image."""
    pairs = []
    for i in np.intersect1d(gt["img"][gt_left], dets["img"][det_left]):
        g = np.flatnonzero(gt_left & (gt["img"] == i))
        d = np.flatnonzero(det_left & (dets["img"] == i))
        iou = box_iou(dets["boxes"][d], gt["boxes"][g])
        for r in range(len(d)):
            j = int(iou[r].argmax())
            if iou[r, j] >= fg:
                pairs.append((g[j], d[r]))
                iou[:, j] = -1.0
    return pairs


def confusion_matrix(gt: dict, dets: dict, st: dict, k: int, score_thresh: float, fg: float) -> np.ndarray:
    """Counts [K + 1, K + 1] at score >= score_thresh: rows = ground-truth classes then "background"
    (detections matched to no box: on nothing, badly placed, or a second detection of any class on a box
    already taken); columns = predicted classes then "missed". A detection first matches its own class (the
    TIDE matching), then the left-overs match across classes (IoU >= fg, greedy by score). Each non-ignored box is counted once in its row, each non-ignored
    detection above the threshold once in its column; ignored ones (difficult / crowd) are left out."""
    above = (dets["scores"] >= score_thresh) & ~st["ignored"]
    hit = above & (st["match"] >= 0)
    gt_left = ~gt["ignore"]
    gt_left[st["match"][hit]] = False
    det_left = above & ~hit
    pairs = np.array(_cross_class(gt, dets, gt_left, det_left, fg), np.int64).reshape(-1, 2)
    gt_left[pairs[:, 0]], det_left[pairs[:, 1]] = False, False
    rows = np.concatenate([gt["labels"][st["match"][hit]], gt["labels"][pairs[:, 0]], gt["labels"][gt_left],
                           np.full(det_left.sum(), k + 1)]) - 1
    cols = np.concatenate([dets["labels"][hit], dets["labels"][pairs[:, 1]], np.full(gt_left.sum(), k + 1),
                           dets["labels"][det_left]]) - 1
    mat = np.zeros((k + 1, k + 1), np.int64)
    np.add.at(mat, (rows, cols), 1)
    return mat


def _by_size(gt: dict, dets: dict, num_images: int, k: int, fg: float) -> dict:
    """AP50, boxes and recall per COCO size (box area): boxes of other sizes are ignored, and so are unmatched
    detections of other sizes (COCOeval's areaRng rule, bounds inclusive)."""
    b = dets["boxes"]
    det_area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    out = {}
    for name, (lo, hi) in SIZES.items():
        out_of_range = (gt["area"] < lo) | (gt["area"] > hi)
        g = dict(gt, ignore=gt["ignore"] | out_of_range, once=out_of_range & ~gt["ignore"])
        st = _match_all(g, dets, num_images, fg)
        tp = st["match"] >= 0
        valid = ~st["ignored"] & (tp | ((det_area >= lo) & (det_area <= hi)))
        npos = np.bincount(gt["labels"][~g["ignore"]], minlength=k + 1)
        aps, _ = _class_aps(dets["labels"], dets["scores"], tp, valid, npos, npos > 0, k)
        n = int(npos.sum())
        out[name] = {"AP50": 100 * _mean(aps) if n else None, "num_gt": n,
                     "recall": 100 * float(tp.sum()) / n if n else None}
    return out


def _box(boxes: np.ndarray, i: int, labels: np.ndarray, classes: list) -> dict:
    return {"box": [round(float(v), 2) for v in boxes[i]], "class": classes[labels[i] - 1]}


def _gallery(gt: dict, dets: dict, st: dict, miss: np.ndarray, classes: list, top: int) -> list:
    """The `top` highest-scoring false positives (with the box their error is about, if any) and the
    top // 2 largest missed boxes (with the detection that overlaps them most, if any), for the report."""
    items = []
    fp = np.flatnonzero((st["err"] > 0) & ~st["ignored"])
    for d in fp[np.argsort(-dets["scores"][fp], kind="stable")][:top]:
        t = st["target"][d]
        items.append({"type": ERROR_TYPES[st["err"][d] - 1], "image": int(dets["img"][d]),
                      "score": float(dets["scores"][d]), "det": _box(dets["boxes"], d, dets["labels"], classes),
                      "gt": _box(gt["boxes"], t, gt["labels"], classes) if t >= 0 else None})
    missed = np.flatnonzero(miss)
    for g in missed[np.argsort(-gt["area"][missed], kind="stable")][:max(top // 2, 1)]:
        near = np.flatnonzero((dets["img"] == gt["img"][g]) & ~st["ignored"])
        iou = box_iou(dets["boxes"][near], gt["boxes"][g:g + 1])[:, 0]
        d = near[iou.argmax()] if len(near) and iou.max() > 0 else None  # the nearest detection, if any
        near = None if d is None else {**_box(dets["boxes"], d, dets["labels"], classes),
                                       "score": float(dets["scores"][d])}
        items.append({"type": "Miss", "image": int(gt["img"][g]), "score": None, "det": near,
                      "gt": _box(gt["boxes"], g, gt["labels"], classes)})
    return items


def _pairs(mat: np.ndarray, classes: list) -> list:
    """The non-zero off-diagonal class cells of a [K + 1, K + 1] count matrix, largest first."""
    k = len(classes)
    cells = [(int(mat[r, c]), r, c) for r in range(k) for c in range(k) if r != c and mat[r, c]]
    return [{"gt": classes[r], "predicted": classes[c], "count": n} for n, r, c in sorted(cells, key=lambda x: -x[0])]


# ------------------------------------------------------------------------------------------- entry point
def analyze(annotations: Sequence, detections: Detections, classes: Sequence[str],
            image_ids: Optional[Sequence] = None, *, score_thresh: float = 0.5, fg_iou: float = 0.5,
            bg_iou: float = 0.1, max_dets: int = 100, top_errors: int = 12, progress: bool = False) -> dict:
    """The analysis as a JSON-ready dict (numbers in AP points 0-100, counts as ints).

    annotations: per-image gt dicts (boxes [G, 4] xyxy 0-based, labels [G] in 1..K, optional difficult,
    iscrowd); detections: a list aligned with them or a dict keyed by image id (see results.py).
    Keys: tide, tide_counts, per_class, confusion (at score >= score_thresh), confused_pairs (its
    off-diagonal cells, most first), cls_error_pairs (the Cls errors at any score by box class and
    predicted class, most first), by_size,
    pr_curves (101-point interpolated precision per class), gallery (worst errors; "image" = index),
    settings (num_gt: the boxes that count; num_ignored_gt: the difficult and crowd ones, num_crowd_gt of them
    crowd), empty (no detections at all).
    """
    classes, k = list(classes), len(classes)
    image_ids = [a.get("image_id", i) for i, a in enumerate(annotations)] if image_ids is None else image_ids
    gt = ground_truth(annotations)
    if not np.any(~gt["ignore"]):
        raise EvalError(f"no (non-difficult, non-crowd) ground truth in the {len(annotations)} image(s); "
                        "nothing to analyse: check the split and the class names")
    dets, dropped = _cap(flatten_detections(detections, image_ids, k), max_dets)
    st = _match_all(gt, dets, len(annotations), fg_iou, bg_iou, progress)
    tide, counts, per_class, curves, miss = _tide(gt, dets, st, classes)
    mat = confusion_matrix(gt, dets, st, k, score_thresh, fg_iou)
    gallery = _gallery(gt, dets, st, miss, classes, top_errors)
    for item in gallery:  # the id as the dataset spells it (VOC: a string, COCO: an int)
        i = image_ids[item["image"]]
        item["image_id"] = i if isinstance(i, str) else int(i)
    cls = (st["err"] == CLS) & ~st["ignored"]
    cls_mat = np.zeros((k + 1, k + 1), np.int64)
    np.add.at(cls_mat, (gt["labels"][st["target"][cls]] - 1, dets["labels"][cls] - 1), 1)
    return {
        "tide": tide, "tide_counts": counts, "per_class": per_class,
        "confusion": {"classes": classes + ["background"], "columns": classes + ["missed"],
                      "matrix": mat.tolist(), "score_thresh": score_thresh},
        "confused_pairs": _pairs(mat, classes), "cls_error_pairs": _pairs(cls_mat, classes),
        "by_size": _by_size(gt, dets, len(annotations), k, fg_iou),
        "pr_curves": {"recall": RECALLS.round(2).tolist(),
                      "precision": {c: curves[i].tolist() for i, c in enumerate(classes) if per_class[c]["AP50"]
                                    is not None}},
        "gallery": gallery,
        "settings": {"fg_iou": fg_iou, "bg_iou": bg_iou, "score_thresh": score_thresh, "max_dets": max_dets,
                     "num_images": len(annotations), "num_gt": int(np.sum(~gt["ignore"])),
                     "num_ignored_gt": int(gt["ignore"].sum()), "num_crowd_gt": int(gt["crowd"].sum()),
                     "num_dets": int(len(dets["scores"])),
                     "num_ignored_dets": int(st["ignored"].sum()), "num_dropped_dets": dropped},
        "empty": len(dets["scores"]) == 0,
    }
