"""Detections in memory, and the results files the official tools read.

In memory, per image (aligned with a dataset's index, or keyed by image id): dict(boxes [N, 4] xyxy
0-based continuous pixels, labels [N] int64 in 1..K, scores [N]); torch tensors or numpy arrays.

Files:
- VOC devkit: one `comp4_det_<split>_<class>.txt` per class, lines `<image_id> <score> <x1> <y1> <x2> <y2>`
  in the devkit's 1-based pixels (x1 + 1, y1 + 1, x2, y2). Numbers are written with Python's shortest
  round-trip repr, so reading a file back gives the same float64 values (and the same AP) as in memory.
- COCO: a JSON list of {"image_id", "category_id", "bbox": [x, y, w, h], "score"}, original category ids.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from ..fileio import write_json
from .errors import EvalError

__all__ = [
    "flatten_detections", "write_voc_results", "read_voc_results", "voc_results_path", "coco_results",
    "write_coco_results", "read_coco_results", "find_voc_result_classes", "guess_voc_classes",
]

Detections = Union[Sequence[Mapping], Mapping[str, Mapping]]


def _np(x, dtype) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; numpy conversion happens once, outside any hot path
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def flatten_detections(detections: Detections, image_ids: Sequence, num_classes: Optional[int] = None) -> dict:
    """Per-image detections -> flat arrays img [M] (dataset index), boxes [M, 4] float64, labels, scores.

    `detections` is a list aligned with `image_ids` or a dict keyed by image id (missing ids: none).
    Raises EvalError naming the image and detection for NaN/inf values, negative-size boxes (x2 < x1 or
    y2 < y1), labels outside 1..num_classes, or an unknown image id.
    """
    if isinstance(detections, Mapping):
        index = {str(i): n for n, i in enumerate(image_ids)}
        unknown = [k for k in detections if str(k) not in index]
        if unknown:
            raise EvalError(f"detections: unknown image id {unknown[0]!r} (not in the dataset)")
        items = [(index[str(k)], v) for k, v in detections.items()]
    else:
        if len(detections) != len(image_ids):
            raise EvalError(f"detections: {len(detections)} entries for {len(image_ids)} images")
        items = list(enumerate(detections))
    parts: dict = {"img": [], "boxes": [], "labels": [], "scores": []}
    for n, det in items:
        boxes = _np(det["boxes"], np.float64).reshape(-1, 4)
        labels, scores = _np(det["labels"], np.int64).reshape(-1), _np(det["scores"], np.float64).reshape(-1)
        if not len(boxes) == len(labels) == len(scores):
            raise EvalError(f"detections: image {n} ({image_ids[n]!r}): {len(boxes)} boxes, "
                            f"{len(labels)} labels, {len(scores)} scores")
        parts["img"].append(np.full(len(boxes), n, np.int64))
        parts["boxes"].append(boxes)
        parts["labels"].append(labels)
        parts["scores"].append(scores)
    flat = {k: np.concatenate(v) if v else np.zeros((0, 4) if k == "boxes" else 0) for k, v in parts.items()}
    flat["img"], flat["labels"] = flat["img"].astype(np.int64), flat["labels"].astype(np.int64)
    order = np.argsort(flat["img"], kind="stable")  # dict input may come in any image order
    flat = {k: v[order] for k, v in flat.items()}
    _check_flat(flat, image_ids, num_classes)
    return flat


def _check_flat(flat: dict, image_ids: Sequence, num_classes: Optional[int]) -> None:
    b = flat["boxes"]
    checks = [
        (~np.isfinite(b).all(1) | ~np.isfinite(flat["scores"]), "NaN or infinite box or score"),
        ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]), "negative-size box (x2 < x1 or y2 < y1)"),
    ]
    if num_classes is not None:
        checks.append(((flat["labels"] < 1) | (flat["labels"] > num_classes), f"label outside 1..{num_classes}"))
    for bad, what in checks:
        if bad.any():
            m = int(np.flatnonzero(bad)[0])
            n = int(flat["img"][m])
            j = m - int(np.searchsorted(flat["img"], n))
            raise EvalError(f"detections: image {n} ({image_ids[n]!r}), detection {j}: {what}: "
                            f"box {b[m].tolist()}, label {int(flat['labels'][m])}, score {flat['scores'][m]}")


# --------------------------------------------------------------------------------------------- VOC files
def voc_results_path(results_dir: str, split: str, name: str) -> str:
    return os.path.join(results_dir, f"comp4_det_{split}_{name}.txt")


def write_voc_results(
    results_dir: str, split: str, classes: Sequence[str], image_ids: Sequence, detections: Detections
) -> list:
    """Write one devkit results file per class (empty files too: the devkit expects all); return the paths."""
    flat = flatten_detections(detections, image_ids, len(classes))
    os.makedirs(results_dir, exist_ok=True)
    ids = [str(i) for i in image_ids]
    dev = flat["boxes"] + np.array([1.0, 1.0, 0.0, 0.0])  # the devkit's 1-based pixels
    paths = []
    for k, name in enumerate(classes, start=1):
        m = flat["labels"] == k
        lines = [f"{ids[n]} {s!r} {a!r} {b!r} {c!r} {d!r}\n"
                 for n, s, (a, b, c, d) in zip(flat["img"][m].tolist(), flat["scores"][m].tolist(),
                                               dev[m].tolist())]
        path = voc_results_path(results_dir, split, name)
        with open(path, "w") as f:
            f.writelines(lines)
        paths.append(path)
    return paths


def find_voc_result_classes(results_dir: str, split: str) -> list:
    """Class names of the `comp4_det_<split>_<class>.txt` files in results_dir, sorted."""
    prefix = f"comp4_det_{split}_"
    names = os.listdir(results_dir) if os.path.isdir(results_dir) else []
    return sorted(f[len(prefix):-4] for f in names if f.startswith(prefix) and f.endswith(".txt"))


def guess_voc_classes(results_dir: str, split: str) -> Optional[list]:
    """Classes for a results folder: None (= the 20 VOC classes) when every file is a VOC class, else
    the sorted names found in the file names. Raises EvalError when there is no results file at all."""
    from vggdet.data.voc import VOC_CLASSES

    found = find_voc_result_classes(results_dir, split)
    if not found:
        raise EvalError(f"{results_dir}: no results files {voc_results_path('', split, '<class>')}")
    return None if set(found) <= set(VOC_CLASSES) else found


def _parse_voc_line(line: str, path: str, lineno: int, known: Optional[set]) -> tuple:
    parts = line.split()
    where = f"{path}:{lineno}"
    if len(parts) != 6:
        raise EvalError(f"{where}: expected '<image_id> <score> <x1> <y1> <x2> <y2>', got {line.strip()!r}")
    try:
        score, x1, y1, x2, y2 = (float(v) for v in parts[1:])
    except ValueError:
        raise EvalError(f"{where}: not a number in {line.strip()!r}") from None
    if not np.isfinite([score, x1, y1, x2, y2]).all():
        raise EvalError(f"{where}: NaN or infinite value in {line.strip()!r}")
    if x2 < x1 - 1 or y2 < y1 - 1:  # 1-based inclusive: a one-pixel box has x2 == x1
        raise EvalError(f"{where}: negative-size box in {line.strip()!r}")
    if known is not None and parts[0] not in known:
        raise EvalError(f"{where}: unknown image id {parts[0]!r}")
    return parts[0], score, (x1 - 1.0, y1 - 1.0, x2, y2)


def read_voc_results(
    results_dir: str, split: str, classes: Sequence[str], image_ids: Optional[Sequence] = None
) -> dict:
    """Read devkit results files -> {image_id: dict(boxes [n, 4] 0-based xyxy, labels [n], scores [n])}.

    Only images with detections appear. `image_ids` (optional) validates ids. A missing class file means
    no detections for it (warning); a file for a class not in `classes` is an error. Errors name file:line.
    """
    known = None if image_ids is None else {str(i) for i in image_ids}
    extra = sorted(set(find_voc_result_classes(results_dir, split)) - set(classes))
    if extra:
        raise EvalError(f"{voc_results_path(results_dir, split, extra[0])}: unknown class {extra[0]!r} "
                        f"(classes: {', '.join(classes)})")
    ids, labels, scores, boxes = [], [], [], []
    for k, name in enumerate(classes, start=1):
        path = voc_results_path(results_dir, split, name)
        if not os.path.isfile(path):
            warnings.warn(f"{path}: missing; no detections for class {name!r}", stacklevel=2)
            continue
        with open(path) as f:
            lines = f.read().splitlines()
        i, sc, bx = _parse_voc_file(lines, path, known)
        ids.append(i)
        labels.append(np.full(len(i), k, np.int64))
        scores.append(sc)
        boxes.append(bx)
    if not ids:
        return {}
    uniq, inv = np.unique(np.concatenate(ids), return_inverse=True)
    order = np.argsort(inv, kind="stable")  # group by image, keeping class-file then line order
    splits = np.cumsum(np.bincount(inv, minlength=len(uniq)))[:-1]
    cols = [np.split(np.concatenate(c)[order], splits) for c in (boxes, labels, scores)]
    return {str(i): {"boxes": b, "labels": lab, "scores": sc} for i, b, lab, sc in zip(uniq, *cols)}


def _parse_voc_file(lines: list, path: str, known: Optional[set]) -> tuple:
    """(ids [n], scores [n], boxes [n, 4] 0-based) of one class file; vectorised, with a line-by-line
    pass only to name the first bad line when something is wrong."""
    rows = [ln.split() for ln in lines]
    rows = [r for r in rows if r]
    try:
        if any(len(r) != 6 for r in rows):
            raise ValueError
        ids = [r[0] for r in rows]
        # Python's float(), as voc_eval reads files (and faster than numpy's string casting)
        nums = np.array([float(v) for r in rows for v in r[1:]], np.float64).reshape(-1, 5)
        x1, y1, x2, y2 = nums[:, 1] - 1.0, nums[:, 2] - 1.0, nums[:, 3], nums[:, 4]
        if not np.isfinite(nums).all() or (x2 < x1).any() or (y2 < y1).any():
            raise ValueError
        if known is not None and not known.issuperset(ids):
            raise ValueError
    except ValueError:
        for lineno, line in enumerate(lines, start=1):
            if line.strip():
                _parse_voc_line(line, path, lineno, known)  # raises, naming file:line
        raise EvalError(f"{path}: cannot parse results file") from None
    return np.array(ids, dtype=str), nums[:, 0], np.stack([x1, y1, x2, y2], axis=1)


# -------------------------------------------------------------------------------------------- COCO files
def coco_results(detections: Detections, image_ids: Sequence, label_to_cat_id: Union[Mapping, Sequence]) -> list:
    """Detections -> COCO result dicts: bbox [x, y, w, h] (0-based continuous, as COCO), original cat ids."""
    flat = flatten_detections(detections, image_ids, None)
    cat = _label_map(label_to_cat_id)
    missing = sorted(set(flat["labels"].tolist()) - set(cat))
    if missing:
        raise EvalError(f"detections: label {missing[0]} has no COCO category id")
    ids = [int(i) for i in image_ids]  # COCO image ids are integers
    b = flat["boxes"]
    xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1).tolist()
    return [
        {"image_id": ids[n], "category_id": cat[k], "bbox": box, "score": s}
        for n, k, box, s in zip(flat["img"].tolist(), flat["labels"].tolist(), xywh, flat["scores"].tolist())
    ]


def _label_map(label_to_cat_id: Union[Mapping, Sequence]) -> dict:
    """{label: category id} from a dict or a list indexed by label (COCODetection's [None, id1, ...])."""
    if isinstance(label_to_cat_id, Mapping):
        return {int(k): int(v) for k, v in label_to_cat_id.items()}
    return {k: int(v) for k, v in enumerate(label_to_cat_id) if v is not None}


def write_coco_results(
    path: str, detections: Detections, image_ids: Sequence, label_to_cat_id: Union[Mapping, Sequence]
) -> list:
    """Write the COCO results JSON (atomically: temp file + os.replace); return the result dicts."""
    results = coco_results(detections, image_ids, label_to_cat_id)
    write_json(path, results, indent=None)
    return results


def read_coco_results(path: str, image_ids: Optional[set] = None, cat_ids: Optional[set] = None) -> list:
    """Load and check a COCO results JSON; errors name the file and the entry index."""
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"{path}: cannot read results JSON: {e}") from None
    if not isinstance(results, list):
        raise EvalError(f"{path}: expected a JSON list of detections, got {type(results).__name__}")
    for n, r in enumerate(results):
        _check_coco_entry(r, f"{path}: entry {n}", image_ids, cat_ids)
    return results


def _check_coco_entry(r, where: str, image_ids: Optional[set], cat_ids: Optional[set]) -> None:
    if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(r):
        raise EvalError(f"{where}: expected keys image_id, category_id, bbox, score; got {r!r}")
    box = r["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box + [r["score"]])):
        raise EvalError(f"{where}: bbox must be 4 numbers [x, y, w, h] and score a number, got {r!r}")
    if not np.isfinite(box + [r["score"]]).all() or box[2] < 0 or box[3] < 0:
        raise EvalError(f"{where}: NaN/infinite value or negative-size bbox {box!r}, score {r['score']!r}")
    if image_ids is not None and r["image_id"] not in image_ids:
        raise EvalError(f"{where}: unknown image_id {r['image_id']!r}")
    if cat_ids is not None and r["category_id"] not in cat_ids:
        raise EvalError(f"{where}: unknown category_id {r['category_id']!r}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ------------------------------------------------------------------------- a results file with its dataset
def load_voc_with_results(voc_root: str, split: str, results_dir: str, classes=None) -> tuple:
    """(VOCDetection, {image_id: detections}) for a devkit results folder: what tools/eval_det.py and
    tools/analyze_det.py read. `classes`: None (from the results file names), "auto" (from the XML files)
    or a list of names."""
    from vggdet.data.voc import VOCDetection

    if classes is None:
        classes = guess_voc_classes(results_dir, split)
    ds = VOCDetection(voc_root, split, classes=classes)
    return ds, read_voc_results(results_dir, split, ds.classes, ds.image_ids)


def load_coco_with_results(coco_ann: str, results: str, images: Optional[str] = None) -> tuple:
    """(COCODetection, {image_id: detections}) for a COCO results JSON. `images`: the image folder (only
    the analysis gallery reads it; default <annotation folder>/../<split name>)."""
    from vggdet.data.coco import COCODetection

    if images is None:  # annotations/instances_val2017.json -> val2017/
        stem = os.path.splitext(os.path.basename(coco_ann))[0].replace("instances_", "")
        images = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(coco_ann))), stem)
    from .report import coco_detections

    ds = COCODetection(images, coco_ann, train=False)
    rows = read_coco_results(results, set(ds.image_ids), set(ds.cat_id_to_label))
    return ds, coco_detections(rows, ds.cat_id_to_label)
