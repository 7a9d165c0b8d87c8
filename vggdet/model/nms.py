"""Non-maximum suppression variants for the detection head, as pure functions over flat tensors.

`grouped_nms(boxes [D,4], scores [D], groups [D], method=...)` -> (kept indices, their scores), sorted by
descending score; boxes of different groups (image x class, or image only for class-agnostic NMS) never
suppress each other.
- "nms": torchvision's `batched_nms` (hard suppression above `iou_thresh`).
- "soft_linear" / "soft_gaussian": Soft-NMS (Bodla et al., "Soft-NMS -- Improving Object Detection With
  One Line of Code", ICCV 2017), which decays the scores of overlapping boxes instead of removing them:
  linear s *= 1 - IoU where IoU >= `iou_thresh`; Gaussian s *= exp(-IoU^2 / sigma) for every box (the
  paper's sigma = 0.5). Boxes whose score falls below `min_score` (0.001, as in the paper's released
  code) are dropped. torchvision has no Soft-NMS, hence this code.
While tracing for ONNX export, hard NMS is one `nms` call on boxes shifted apart by group (the offset trick
of batched_nms, with the image extent as the shift: boxes.max() fails on an empty input in the graph).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou, nms

__all__ = ["grouped_nms", "soft_nms", "NMS_METHODS"]

NMS_METHODS = ("nms", "soft_linear", "soft_gaussian")


def grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, *, method: str = "nms", iou_thresh: float = 0.3,
                sigma: float = 0.5, min_score: float = 0.001,
                extent: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """NMS per group; returns (indices into `boxes` [k], scores [k]) by descending score. `extent`: the
    largest image side (boxes are clipped to it), needed while tracing."""
    if torch.jit.is_tracing():
        if method != "nms" or extent is None:
            raise ValueError("ONNX export traces hard NMS with the image extent only")
        keep = nms(boxes + (groups.to(boxes) * (extent + 1).to(boxes))[:, None], scores, iou_thresh)
        return keep, scores[keep]
    if method == "nms":
        keep = batched_nms(boxes, scores, groups, iou_thresh)
        return keep, scores[keep]
    if method not in NMS_METHODS:
        raise ValueError(f"model.roi_head.nms must be one of {NMS_METHODS}, got {method!r}")
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device), scores[:0]
    # The offset trick of batched_nms: shift each group far apart so groups never overlap.
    offsets = groups.to(boxes) * (boxes.max() + 1)
    return soft_nms(boxes + offsets[:, None], scores, linear=method == "soft_linear", iou_thresh=iou_thresh,
                    sigma=sigma, min_score=min_score)


def soft_nms(boxes: Tensor, scores: Tensor, *, linear: bool, iou_thresh: float, sigma: float,
             min_score: float) -> tuple[Tensor, Tensor]:
    """Soft-NMS over one group: pick the best remaining box, decay the others' scores by their IoU with
    it, drop those under `min_score`, repeat. Loops once per kept box; each step is vectorised."""
    scores = scores.clone()
    remaining = torch.arange(len(boxes), device=boxes.device)
    kept, kept_scores = [], []
    while remaining.numel():
        best = int(scores[remaining].argmax())
        i = remaining[best]
        kept.append(i)
        kept_scores.append(scores[i])
        remaining = torch.cat([remaining[:best], remaining[best + 1:]])
        if not remaining.numel():
            break
        iou = box_iou(boxes[i][None], boxes[remaining])[0]
        if linear:
            decay = torch.where(iou >= iou_thresh, 1.0 - iou, torch.ones_like(iou))
        else:
            decay = torch.exp(-(iou * iou) / sigma)
        scores[remaining] = scores[remaining] * decay
        remaining = remaining[scores[remaining] >= min_score]
    keep, out = torch.stack(kept), torch.stack(kept_scores)
    order = out.argsort(descending=True, stable=True)
    return keep[order], out[order]
