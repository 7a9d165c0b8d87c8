"""External region proposals (Selective Search, EdgeBoxes, ...) for classic Fast R-CNN training / testing.

Accepted files (boxes: 0-based continuous xyxy in original-image pixels; scores optional):
- .pkl / .json: a mapping {image_id: boxes} where boxes is [M, 4] (or [M, 5] with a score column) or
  {"boxes": [M, 4], "scores": [M]}; or the column form {"ids": [...], "boxes": [[M, 4], ...],
  "scores": [[M], ...] (optional)}.
- .npz: one array per image id, [M, 4] or [M, 5] (`np.savez(path, **{str(image_id): boxes})`).
Image ids may be strings or ints; they are matched as strings. With scores, the top_n highest-scoring are
kept; without, the first top_n (files are expected to be sorted best first).
"""
from __future__ import annotations

import json
import os
import pickle
from typing import Any, Optional

import numpy as np

from .errors import DataError

__all__ = ["load_proposals"]


def load_proposals(path: str, top_n: Optional[int] = None) -> dict:
    """{str(image_id): float32 [M, 4] xyxy} with M <= top_n."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".pkl", ".pickle", ".npz", ".json"):
        raise DataError(f"{path}: unknown proposals file extension {ext!r} (expected .pkl, .npz or .json)")
    if not os.path.isfile(path):
        raise DataError(f"{path}: proposals file not found")
    try:
        raw = _read(path, ext)
        entries = _entries(raw)
        return {str(k): _top(v, top_n) for k, v in entries}
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read proposals ({type(e).__name__}: {e})") from None


def _read(path: str, ext: str) -> Any:
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if ext == ".json":
        with open(path) as f:
            return json.load(f)
    with open(path, "rb") as f:
        return pickle.load(f)


def _entries(raw: Any) -> list:
    if not isinstance(raw, dict):
        raise ValueError(f"expected a dict at the top level, got {type(raw).__name__}")
    if "ids" in raw and "boxes" in raw:  # column form
        scores = raw.get("scores") or [None] * len(raw["ids"])
        return [(i, {"boxes": b, "scores": s}) for i, b, s in zip(raw["ids"], raw["boxes"], scores)]
    return list(raw.items())


def _top(value: Any, top_n: Optional[int]) -> np.ndarray:
    scores = None
    if isinstance(value, dict):
        boxes = np.asarray(value["boxes"], dtype=np.float32).reshape(-1, 4)
        if value.get("scores") is not None:
            scores = np.asarray(value["scores"], dtype=np.float32).reshape(-1)
    else:
        arr = np.asarray(value, dtype=np.float32)
        arr = arr.reshape(-1, arr.shape[-1] if arr.ndim == 2 else 4)
        if arr.shape[1] not in (4, 5):
            raise ValueError(f"proposal arrays must be [M, 4] or [M, 5], got {arr.shape}")
        boxes, scores = arr[:, :4], (arr[:, 4] if arr.shape[1] == 5 else None)
    if scores is not None:
        boxes = boxes[np.argsort(-scores, kind="stable")]
    return np.ascontiguousarray(boxes[:top_n] if top_n else boxes)
