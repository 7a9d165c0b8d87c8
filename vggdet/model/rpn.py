"""Region proposal network (Faster R-CNN §3.1), in three steps as in detectron2:

1. `anchor_targets` — label & sample anchors against the ground truth (no grad);
2. `losses` — objectness cross-entropy and smooth-L1 (sigma 3) on the sampled anchors;
3. `proposals` — decode, clip, drop small, top-k, NMS, top-k (no grad).

Shapes: N images, A anchors per cell (9), h x w feature map, T = h * w * A anchors per image.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vggdet.model.boxes import (
    BoxCoder,
    base_anchors,
    clip_boxes,
    dim,
    grid_anchors,
    match,
    rank_in_group,
    sample_balanced,
    smooth_l1,
)
from vggdet.model.nms import grouped_nms


class RPN(nn.Module):
    def __init__(self, *, in_channels: int, conv_channels: int, stride: int, scales: Sequence[float],
                 ratios: Sequence[float], fg_iou: float, bg_iou: float, batch_size_per_image: int,
                 positive_fraction: float, allowed_border: float, pre_nms_top_n: tuple[int, int],
                 post_nms_top_n: tuple[int, int], nms_thresh: float, min_size: float, sigma: float):
        super().__init__()
        conv_channels = conv_channels or in_channels
        self.conv = nn.Conv2d(in_channels, conv_channels, 3, padding=1)
        self.register_buffer("base", base_anchors(stride, scales, ratios), persistent=False)
        num_anchors = self.base.shape[0]
        self.cls_logits = nn.Conv2d(conv_channels, num_anchors, 1)  # sigmoid == the original 2-way softmax
        self.bbox_pred = nn.Conv2d(conv_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        self.stride = stride
        self.coder = BoxCoder()
        self.fg_iou, self.bg_iou = fg_iou, bg_iou
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.allowed_border = allowed_border
        self.pre_nms_top_n, self.post_nms_top_n = pre_nms_top_n, post_nms_top_n  # (train, test)
        self.nms_thresh, self.min_size, self.sigma = nms_thresh, min_size, sigma
        self._anchor_cache: dict = {}

    def anchors(self, feat_h: int, feat_w: int) -> Tensor:
        """[T,4] anchors for a feature map size, cached: batches of one image size reuse them."""
        key = (feat_h, feat_w, self.base.device)
        if key not in self._anchor_cache:
            if len(self._anchor_cache) > 32:
                self._anchor_cache.clear()
            self._anchor_cache[key] = grid_anchors(self.base, feat_h, feat_w, self.stride)
        return self._anchor_cache[key]

    def anchors_for(self, features: Tensor) -> Tensor:
        """The anchors of a feature map [N,C,h,w]; while tracing, built from its size as graph values."""
        if torch.jit.is_tracing():
            return grid_anchors(self.base, dim(features, 2), dim(features, 3), self.stride)
        return self.anchors(features.shape[2], features.shape[3])

    def head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features [N,C,h,w] -> (objectness logits [N,T], box deltas [N,T,4]), T = h * w * A in (h, w, a) order."""
        x = F.relu(self.conv(features))
        logits = self.cls_logits(x).permute(0, 2, 3, 1).flatten(1)
        deltas = self.bbox_pred(x).permute(0, 2, 3, 1).reshape(features.shape[0], -1, 4)  # channels are (a, xywh)
        return logits, deltas

    def forward(self, features: Tensor, image_sizes: list[tuple[int, int]], scales: list[float],
                gt_boxes: Optional[list[Tensor]] = None) -> tuple[list[Tensor], dict]:
        """features [N,C,h,w]; image_sizes (h, w) after resize; scales: resize factors (for min_size).

        Returns (proposals: N tensors [P,4] in network-input pixels, losses dict (training only)).
        """
        logits, deltas = self.head(features)
        anchors = self.anchors_for(features)
        # Decode in float32 even under autocast: half/bf16 anchor coordinates are pixels off.
        proposals = self.proposals(logits.detach().float(), deltas.detach().float(), anchors, image_sizes, scales)
        losses = {}
        if self.training:
            if gt_boxes is None:
                raise ValueError("RPN in training mode needs ground-truth boxes")
            labels, targets = self.anchor_targets(anchors, image_sizes, gt_boxes)
            losses = self.losses(logits, deltas, labels, targets)
        return proposals, losses

    @torch.no_grad()
    def anchor_targets(self, anchors: Tensor, image_sizes: list[tuple[int, int]],
                       gt_boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Labels [N,T] (1 fg, 0 bg, -1 ignored/unsampled) and regression targets [N,T,4].

        Anchors crossing the image border (by more than `allowed_border`) are ignored, as in the original.
        """
        all_labels, all_targets = [], []
        b = self.allowed_border
        for (h, w), gt in zip(image_sizes, gt_boxes):
            inside = ((anchors[:, 0] >= -b) & (anchors[:, 1] >= -b)
                      & (anchors[:, 2] <= w + b) & (anchors[:, 3] <= h + b))
            labels = torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
            targets = torch.zeros_like(anchors)
            idx_in = torch.nonzero(inside).squeeze(1)
            lab_in, matched = match(anchors[idx_in], gt, self.fg_iou, self.bg_iou, allow_best=True)
            fg, bg = sample_balanced(lab_in, self.batch_size_per_image, self.positive_fraction)
            labels[idx_in[bg]] = 0
            labels[idx_in[fg]] = 1
            if fg.numel():
                targets[idx_in[fg]] = self.coder.encode(gt[matched[fg]], anchors[idx_in[fg]])
            all_labels.append(labels)
            all_targets.append(targets)
        return torch.stack(all_labels), torch.stack(all_targets)

    def losses(self, logits: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor) -> dict:
        sampled = labels >= 0
        fg = labels == 1
        num = sampled.sum().clamp(min=1)
        loss_cls = F.binary_cross_entropy_with_logits(
            logits[sampled], labels[sampled].to(logits.dtype), reduction="sum") / num
        # Normalised by the number of sampled anchors (the original's outside weights = 1 / 256).
        loss_box = smooth_l1(deltas[fg].float(), targets[fg], self.sigma) / num
        return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}

    @torch.no_grad()
    def proposals(self, logits: Tensor, deltas: Tensor, anchors: Tensor,
                  image_sizes: list[tuple[int, int]], scales: list[float]) -> list[Tensor]:
        """`select_proposals` with this RPN's settings for the mode (train / test): one [P,4] tensor per image."""
        mode = 0 if self.training else 1
        sizes = torch.tensor(image_sizes, device=logits.device)
        min_sizes = torch.tensor(scales, dtype=torch.float32, device=logits.device) * self.min_size
        boxes, img = select_proposals(logits, deltas, anchors, sizes, min_sizes, self.coder, self.pre_nms_top_n[mode],
                                      self.post_nms_top_n[mode], self.nms_thresh)
        return [boxes[img == i] for i in range(len(image_sizes))]


def select_proposals(logits: Tensor, deltas: Tensor, anchors: Tensor, sizes: Tensor, min_sizes: Tensor,
                     coder: BoxCoder, pre_nms_top_n: int, post_nms_top_n: int, nms_thresh: float) -> tuple[Tensor, Tensor]:
    """Top `pre_nms_top_n` anchors by objectness -> decode, clip, drop small, NMS -> `post_nms_top_n`, per image.

    logits [N,T], deltas [N,T,4], anchors [T,4], sizes [N,2] (h, w) after resize, min_sizes [N] (pixels).
    Returns (boxes [R,4], their image index [R]), by image and then descending score. Vectorised over the
    batch: one topk, one decode, one NMS. The eager RPN and the ONNX graph both run this function.
    """
    n = dim(logits, 0)
    k = torch.clamp(dim(logits, 1), max=pre_nms_top_n) if torch.jit.is_tracing() else min(pre_nms_top_n, logits.shape[1])
    scores, idx = logits.topk(k, dim=1)  # [N,k]
    boxes = coder.decode(deltas.gather(1, idx[..., None].expand(-1, -1, 4)).reshape(-1, 4), anchors[idx.reshape(-1)])
    img = torch.arange(n, device=boxes.device)[:, None].expand(-1, k).reshape(-1)
    boxes = clip_boxes(boxes, sizes[img])
    keep = (boxes[:, 2:] - boxes[:, :2] >= min_sizes[img][:, None]).all(1)
    boxes, scores, img = boxes[keep], scores.reshape(-1)[keep], img[keep]
    kept, _ = grouped_nms(boxes, scores.float(), img, iou_thresh=nms_thresh, extent=sizes.max())  # by score
    kept = kept[rank_in_group(img[kept], n) < post_nms_top_n]
    return boxes[kept], img[kept]
