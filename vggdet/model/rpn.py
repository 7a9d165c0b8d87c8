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
from torchvision.ops import batched_nms

from vggdet.model.boxes import BoxCoder, base_anchors, grid_anchors, match, sample_balanced, smooth_l1


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

    def forward(self, features: Tensor, image_sizes: list[tuple[int, int]], scales: list[float],
                gt_boxes: Optional[list[Tensor]] = None) -> tuple[list[Tensor], dict]:
        """features [N,C,h,w]; image_sizes (h, w) after resize; scales: resize factors (for min_size).

        Returns (proposals: N tensors [P,4] in network-input pixels, losses dict (training only)).
        """
        n, _, fh, fw = features.shape
        x = F.relu(self.conv(features))
        logits = self.cls_logits(x).permute(0, 2, 3, 1).reshape(n, -1)  # [N,T], order (h, w, a)
        deltas = self.bbox_pred(x).view(n, -1, 4, fh, fw).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        anchors = self.anchors(fh, fw)
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
        """Top `pre_nms_top_n` anchors by objectness -> decode, clip, drop small, NMS -> `post_nms_top_n`.

        Vectorised over the batch: one topk, one decode and one batched_nms for all images.
        """
        n, t = logits.shape
        mode = 0 if self.training else 1
        k = min(self.pre_nms_top_n[mode], t)
        scores, idx = logits.topk(k, dim=1)  # [N,k]
        boxes = self.coder.decode(deltas.gather(1, idx[..., None].expand(-1, -1, 4)).reshape(-1, 4),
                                  anchors[idx.reshape(-1)]).view(n, k, 4)
        size = torch.tensor([[w, h] for h, w in image_sizes], dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0), size.repeat(1, 2)[:, None, :])
        min_size = torch.tensor(scales, dtype=boxes.dtype, device=boxes.device)[:, None] * self.min_size
        ws, hs = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        keep = (ws >= min_size) & (hs >= min_size)
        img = torch.arange(n, device=boxes.device)[:, None].expand(n, k)
        boxes, scores, img = boxes[keep], scores[keep], img[keep]
        kept = batched_nms(boxes, scores.float(), img, self.nms_thresh)  # sorted by descending score
        post = self.post_nms_top_n[mode]
        return [boxes[kept[img[kept] == i][:post]] for i in range(n)]
