"""Sliced (tiled) inference for small objects: cut an image into overlapping tiles, run each through the model at
its own resize, map the boxes back to image pixels and merge them (SAHI, Akyon et al. 2022, in spirit).

A VGG16 at stride 16 on an image resized to a 600-px shorter side cannot see an object of a few dozen
pixels in a 3000-px photo: after the resize it covers one or two feature cells. A 512-px tile of the same
photo is *enlarged* to 600 px, so each object is seen at ~5x the size.

- Grid (`tile_grid`): tiles of `size` x `size` image pixels, stepping by size * (1 - overlap); the last tile
  of a row / column is aligned to the image edge, so every pixel is covered and no tile sticks out. An
  image no larger than one tile is one tile: the plain, un-tiled prediction (tested).
- `full_image`: the whole image runs too, so objects larger than a tile (or than the overlap) are found
  at the scale the model was trained for.
- Boxes cut by an inner tile border: a tile's box that touches one of the tile's borders lying inside the
  image is dropped: the object continues beyond the tile, and with objects smaller than the overlap the
  neighbouring tile holds it whole; larger objects come from the full-image pass. Boxes on the image's own
  edges are kept.
- Merge: all passes' boxes by per-class NMS at `model.roi_head.nms_thresh` (Soft-NMS when
  `model.roi_head.nms` says so), sorted by score. With a single pass nothing is merged.

Works on the prepared inputs of any backend ([3,H,W] tensors or arrays); vggdet/inference/base.py runs the
tiles through the backend's forward grouped by tile size.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["tile_grid", "crop", "drop_cut_boxes", "merge"]

BORDER_PX = 1.0  # a box edge this close to an inner tile border counts as cut by it


def _starts(length: int, size: int, step: int) -> list:
    if length <= size:
        return [0]
    starts = list(range(0, length - size, step))
    return starts + [length - size]


def tile_grid(height: int, width: int, size: int, overlap: float) -> list:
    """(x0, y0, x1, y1) tiles covering an image, row by row; one tile when the image fits in one."""
    if size < 16:
        raise ValueError(f"test.tiles.size must be >= 16 pixels, got {size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"test.tiles.overlap must be in [0, 1), got {overlap}")
    step = max(1, int(round(size * (1.0 - overlap))))
    return [(x, y, min(x + size, width), min(y + size, height))
            for y in _starts(height, size, step) for x in _starts(width, size, step)]


def crop(image, tile: tuple):
    """A [3,H,W] tensor or array cut to `tile` (a view where the backend allows one)."""
    x0, y0, x1, y1 = tile
    return image[:, y0:y1, x0:x1]


def drop_cut_boxes(det: dict, tile: tuple, height: int, width: int) -> dict:
    """Map a tile's detections to image pixels and drop the boxes that touch an inner tile border."""
    x0, y0, x1, y1 = tile
    boxes = det["boxes"] + np.array([x0, y0, x0, y0], dtype=np.float32)
    cut = np.zeros(len(boxes), dtype=bool)
    if x0 > 0:
        cut |= boxes[:, 0] <= x0 + BORDER_PX
    if y0 > 0:
        cut |= boxes[:, 1] <= y0 + BORDER_PX
    if x1 < width:
        cut |= boxes[:, 2] >= x1 - BORDER_PX
    if y1 < height:
        cut |= boxes[:, 3] >= y1 - BORDER_PX
    keep = ~cut
    return {"boxes": boxes[keep], "labels": det["labels"][keep], "scores": det["scores"][keep]}


def merge(dets: list, nms_thresh: float, method: str = "nms", sigma: float = 0.5, min_score: float = 0.001,
          class_agnostic: bool = False, max_detections: Optional[int] = None) -> dict:
    """All passes' detections (image pixels) -> one set by NMS per class (per image when class-agnostic)."""
    import torch

    from vggdet.model.nms import grouped_nms

    boxes = torch.from_numpy(np.concatenate([d["boxes"] for d in dets]).astype(np.float32).reshape(-1, 4))
    scores = torch.from_numpy(np.concatenate([d["scores"] for d in dets]).astype(np.float32))
    labels = np.concatenate([d["labels"] for d in dets]).astype(np.int64)
    groups = torch.zeros(len(labels), dtype=torch.int64) if class_agnostic else torch.from_numpy(labels)
    kept, kept_scores = grouped_nms(boxes, scores, groups, method=method, iou_thresh=nms_thresh, sigma=sigma,
                                    min_score=min_score)
    kept, kept_scores = kept[:max_detections], kept_scores[:max_detections]
    return {"boxes": boxes[kept].numpy(), "labels": labels[kept.numpy()], "scores": kept_scores.numpy()}
