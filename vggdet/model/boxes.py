"""Box maths as pure functions: the box coder, anchors, matching and sampling.

Conventions: boxes are xyxy, 0-based, continuous pixels (torchvision's), so a box's width is x2 - x1.
Shapes: A anchors per location, R boxes, G ground-truth boxes.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["BoxCoder", "base_anchors", "grid_anchors", "clip_boxes", "rank_in_group", "match", "sample_balanced",
           "smooth_l1", "dim"]

# exp() of a predicted log-size delta is clamped to this, so a wild prediction cannot overflow
# (the same bound torchvision uses: log(1000 / 16)).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes a box relative to a reference box as (dx, dy, dw, dh) / stds.

    The Fast R-CNN target normalisation uses stds (0.1, 0.1, 0.2, 0.2): the same thing as torchvision's
    `weights=(10, 10, 5, 5)`; we spell it as stds everywhere. The RPN uses stds of 1.
    """

    def __init__(self, stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0)):
        self.stds = tuple(float(s) for s in stds)

    def encode(self, boxes: Tensor, ref: Tensor) -> Tensor:
        """boxes, ref: [R,4] -> deltas [R,4] that turn `ref` into `boxes`."""
        rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
        rx, ry = ref[:, 0] + 0.5 * rw, ref[:, 1] + 0.5 * rh
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
        deltas = torch.stack(((bx - rx) / rw, (by - ry) / rh, torch.log(bw / rw), torch.log(bh / rh)), dim=1)
        return deltas / deltas.new_tensor(self.stds)

    def decode(self, deltas: Tensor, ref: Tensor) -> Tensor:
        """deltas [R,4*C] (C boxes per reference, e.g. one per class), ref [R,4] -> boxes [R,4*C]."""
        ref = ref.to(deltas.dtype)
        rw, rh = ref[:, 2:3] - ref[:, 0:1], ref[:, 3:4] - ref[:, 1:2]
        rx, ry = ref[:, 0:1] + 0.5 * rw, ref[:, 1:2] + 0.5 * rh
        d = deltas.unflatten(1, (-1, 4)) * deltas.new_tensor(self.stds)  # unflatten: also for R = 0
        cx = d[..., 0] * rw + rx
        cy = d[..., 1] * rh + ry
        w = torch.exp(d[..., 2].clamp(max=BBOX_XFORM_CLIP)) * rw
        h = torch.exp(d[..., 3].clamp(max=BBOX_XFORM_CLIP)) * rh
        out = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)
        return out.reshape(deltas.shape)


def base_anchors(stride: int = 16, scales=(8, 16, 32), ratios=(0.5, 1.0, 2.0)) -> Tensor:
    """The A = len(ratios) * len(scales) anchors of one feature cell, centred on pixel (0, 0)'s cell.

    Reproduces py-faster-rcnn's `generate_anchors` (ratio-major order, widths rounded as there) and
    returns them in our continuous convention: the original's inclusive [x1, y1, x2, y2] becomes
    [x1, y1, x2 + 1, y2 + 1]. For stride 16 the first is [-84, -40, 100, 56].
    """
    size = float(stride)
    ctr = 0.5 * (size - 1)  # the original works in inclusive pixels: the centre of 0..15 is 7.5
    out = []
    for r in ratios:
        w_r = round(math.sqrt(size * size / r))
        h_r = round(w_r * r)
        for s in scales:
            w, h = w_r * s, h_r * s
            out.append([ctr - 0.5 * (w - 1), ctr - 0.5 * (h - 1), ctr + 0.5 * (w - 1) + 1, ctr + 0.5 * (h - 1) + 1])
    return torch.tensor(out, dtype=torch.float32)


def grid_anchors(base: Tensor, feat_h: int, feat_w: int, stride: int) -> Tensor:
    """All anchors of an feat_h x feat_w map: [feat_h * feat_w * A, 4], location-major (h, w, a)."""
    sx = torch.arange(feat_w, dtype=torch.float32, device=base.device) * stride
    sy = torch.arange(feat_h, dtype=torch.float32, device=base.device) * stride
    yy, xx = torch.meshgrid(sy, sx, indexing="ij")
    shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)
    return (shifts + base.view(1, -1, 4)).reshape(-1, 4)


def clip_boxes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """boxes [..., 4] xyxy, sizes [..., 2] (h, w) broadcastable to them -> boxes inside [0, w] x [0, h]."""
    wh = sizes.flip(-1).to(boxes.dtype)
    return torch.minimum(boxes.clamp(min=0), torch.cat([wh, wh], dim=-1))


def rank_in_group(group: Tensor, num_groups) -> Tensor:
    """For a sequence of group ids in 0..num_groups-1, each element's position among the earlier elements of
    its group (so `rank < k` keeps the first k of every group: a per-image top-k on score-sorted rows)."""
    onehot = (group[:, None] == torch.arange(num_groups, device=group.device)[None]).to(torch.int64)
    return (onehot.cumsum(0) * onehot).sum(1) - 1


def dim(x: Tensor, i: int):
    """`x.shape[i]`, as a graph value while tracing for ONNX export (a Python int would be frozen into the
    graph as the example's size) and as a plain int otherwise."""
    return torch._shape_as_tensor(x)[i] if torch.jit.is_tracing() else x.shape[i]


def match(boxes: Tensor, gt: Tensor, fg_iou: float, bg_hi: float, bg_lo: float = 0.0,
          allow_best: bool = False) -> tuple[Tensor, Tensor]:
    """Label each box fg (1), bg (0) or ignore (-1) by IoU with the ground truth.

    Returns (labels [R] int64, matched gt index [R] int64). fg: IoU >= fg_iou; bg: bg_lo <= IoU < bg_hi.
    `allow_best` also makes each GT's best-overlapping box(es) fg (the RPN rule; ties all count, as in the
    original). With no GT every box with bg_lo <= 0 is bg.
    """
    r = boxes.shape[0]
    if gt.numel() == 0:
        labels = torch.full((r,), 0 if bg_lo <= 0 else -1, dtype=torch.int64, device=boxes.device)
        return labels, torch.zeros(r, dtype=torch.int64, device=boxes.device)
    iou = box_iou(boxes, gt)  # [R, G]
    best, idx = iou.max(dim=1)
    labels = torch.full((r,), -1, dtype=torch.int64, device=boxes.device)
    labels[(best >= bg_lo) & (best < bg_hi)] = 0
    if allow_best:
        gt_best = iou.max(dim=0).values  # [G]
        is_best = (iou == gt_best[None]) & (gt_best[None] > 0)
        labels[is_best.any(dim=1)] = 1
    labels[best >= fg_iou] = 1
    return labels, idx


def sample_balanced(labels: Tensor, num: int, fg_fraction: float, generator=None) -> tuple[Tensor, Tensor]:
    """Sample at most `num` indices with at most `num * fg_fraction` fg (label 1), the rest bg (label 0).

    Returns (fg indices, bg indices). Random without replacement, as in the papers.
    """
    fg = torch.nonzero(labels == 1).squeeze(1)
    bg = torch.nonzero(labels == 0).squeeze(1)
    n_fg = min(int(num * fg_fraction), fg.numel())
    n_bg = min(num - n_fg, bg.numel())
    fg = fg[torch.randperm(fg.numel(), device=fg.device, generator=generator)[:n_fg]] if fg.numel() > n_fg else fg
    bg = bg[torch.randperm(bg.numel(), device=bg.device, generator=generator)[:n_bg]] if bg.numel() > n_bg else bg
    return fg, bg


def smooth_l1(pred: Tensor, target: Tensor, sigma: float) -> Tensor:
    """Summed smooth-L1 with the original's sigma: quadratic below 1/sigma^2 (beta = 1/sigma^2)."""
    return torch.nn.functional.smooth_l1_loss(pred, target, beta=1.0 / (sigma * sigma), reduction="sum")
