"""Fast R-CNN head: sample RoIs, RoIPool 7x7 at 1/16, fc6-fc7, class scores and per-class boxes.

Shapes: N images, R RoIs in the batch, K foreground classes (label 0 = background), C channels.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

from vggdet.model.boxes import BoxCoder, clip_boxes, dim, match, rank_in_group, sample_balanced, smooth_l1
from vggdet.model.nms import grouped_nms


def linear(in_dim: int, out_dim: int, rank: Optional[int]) -> nn.Module:
    """nn.Linear, or two low-rank factors (truncated SVD, Fast R-CNN §3.1) when `rank` is set."""
    if rank is None:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, rank, bias=False), nn.Linear(rank, out_dim))


class RoIHead(nn.Module):
    def __init__(self, *, in_channels: int, num_classes: int, pool: str, pool_size: int, spatial_scale: float,
                 sampling_ratio: int, fc_dim: int, fc6_rank: Optional[int], fc7_rank: Optional[int],
                 dropout: float, batch_size_per_image: int, fg_fraction: float, fg_iou: float,
                 bg_iou_hi: float, bg_iou_lo: float, bbox_stds: tuple, sigma: float, score_thresh: float,
                 nms_thresh: float, detections_per_img: int, nms: str = "nms", nms_sigma: float = 0.5,
                 soft_nms_min_score: float = 0.001, class_agnostic_nms: bool = False):
        super().__init__()
        self.pool, self.pool_size, self.spatial_scale = pool, pool_size, spatial_scale
        self.sampling_ratio = sampling_ratio
        self.fc6 = linear(in_channels * pool_size * pool_size, fc_dim, fc6_rank)
        self.fc7 = linear(fc_dim, fc_dim, fc7_rank)
        self.dropout = nn.Dropout(dropout)
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)  # the original's initialisation
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.num_classes = num_classes
        self.coder = BoxCoder(bbox_stds)
        self.batch_size_per_image, self.fg_fraction = batch_size_per_image, fg_fraction
        self.fg_iou, self.bg_iou_hi, self.bg_iou_lo = fg_iou, bg_iou_hi, bg_iou_lo
        self.sigma = sigma
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.nms, self.nms_sigma, self.soft_nms_min_score = nms, nms_sigma, soft_nms_min_score
        self.class_agnostic_nms = class_agnostic_nms

    def forward(self, features: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: Optional[list[dict]] = None) -> tuple[Optional[list[dict]], dict]:
        """Training: returns (None, {loss_cls, loss_box}). Eval: (detections per image, {})."""
        if self.training:
            if targets is None:
                raise ValueError("RoI head in training mode needs targets")
            proposals, labels, box_targets = self.sample(proposals, targets)
        scores, deltas = self.predict(features, proposals)
        if self.training:
            return None, self.losses(scores, deltas, labels, box_targets)
        return self.postprocess(scores, deltas, proposals, image_sizes), {}

    @torch.no_grad()
    def sample(self, proposals: list[Tensor], targets: list[dict]) -> tuple[list[Tensor], Tensor, Tensor]:
        """Per image: add the GT boxes to the proposals, label by IoU, sample <= 128 with <= 25 % fg.

        Returns (sampled RoIs per image, labels [R] in 0..K, box targets [R,4] (zeros for bg)).
        """
        rois, labels, box_targets = [], [], []
        for props, tgt in zip(proposals, targets):
            gt, gt_labels = tgt["boxes"], tgt["labels"]
            props = torch.cat([props, gt.to(props.dtype)])
            # A background image (no GT) gives pure negatives whatever bg_iou_lo: that bound keeps negatives
            # near some object, and there is none; with it, a background image would teach the head nothing.
            fgbg, idx = match(props, gt, self.fg_iou, self.bg_iou_hi, self.bg_iou_lo if gt.numel() else 0.0)
            fg, bg = sample_balanced(fgbg, self.batch_size_per_image, self.fg_fraction)
            keep = torch.cat([fg, bg])
            lab = torch.zeros(keep.numel(), dtype=torch.int64, device=props.device)
            t = torch.zeros(keep.numel(), 4, dtype=props.dtype, device=props.device)
            if fg.numel():
                lab[: fg.numel()] = gt_labels[idx[fg]]
                t[: fg.numel()] = self.coder.encode(gt[idx[fg]].to(props.dtype), props[fg])
            rois.append(props[keep])
            labels.append(lab)
            box_targets.append(t)
        return rois, torch.cat(labels), torch.cat(box_targets)

    def predict(self, features: Tensor, rois: Union[list[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """RoI features -> (class logits [R,K+1], box deltas [R,4(K+1)]).

        rois: one [R_i,4] tensor per image, or [R,5] (image index, x1, y1, x2, y2) as torchvision's ops take.
        """
        # Pool in float32 whatever the feature dtype: half/bf16 RoI coordinates would be off by pixels
        # (bf16 has 8 mantissa bits: a step of 4 px at x = 800), and torchvision's CPU roi_pool has no
        # bf16 kernel. The cast of one feature map is cheap; fc6/fc7 then run in the features' dtype.
        feats = features.float()
        rois = rois.float() if isinstance(rois, Tensor) else [r.float() for r in rois]
        if self.pool == "align":
            x = roi_align(feats, rois, self.pool_size, self.spatial_scale, self.sampling_ratio, aligned=True)
        else:
            x = roi_pool(feats, rois, self.pool_size, self.spatial_scale)
        x = x.to(features.dtype).flatten(1)
        x = self.dropout(F.relu(self.fc6(x)))
        x = self.dropout(F.relu(self.fc7(x)))
        return self.cls_score(x), self.bbox_pred(x)

    def losses(self, scores: Tensor, deltas: Tensor, labels: Tensor, box_targets: Tensor) -> dict:
        num = max(labels.numel(), 1)
        if labels.numel() == 0:  # nothing sampled (no GT and bg_lo > 0): zero losses that keep the graph
            zero = scores.sum() * 0 + deltas.sum() * 0
            return {"loss_cls": zero, "loss_box": zero}
        loss_cls = F.cross_entropy(scores.float(), labels)
        fg = torch.nonzero(labels > 0).squeeze(1)
        d = deltas.float().view(deltas.shape[0], -1, 4)[fg, labels[fg]]  # the GT class's box only
        loss_box = smooth_l1(d, box_targets[fg].float(), self.sigma) / num
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    @torch.no_grad()
    def postprocess(self, scores: Tensor, deltas: Tensor, rois: list[Tensor],
                    image_sizes: list[tuple[int, int]]) -> list[dict]:
        """`detect` on per-image RoI lists -> one {"boxes", "labels", "scores"} dict per image."""
        counts = torch.tensor([r.shape[0] for r in rois], device=scores.device)
        img = torch.repeat_interleave(torch.arange(len(rois), device=scores.device), counts)
        sizes = torch.tensor(image_sizes, device=scores.device)
        boxes, labels, probs, img = self.detect(scores, deltas, torch.cat(rois), img, sizes, len(rois))
        return [{"boxes": boxes[img == i], "labels": labels[img == i], "scores": probs[img == i]}
                for i in range(len(rois))]

    @torch.no_grad()
    def detect(self, scores: Tensor, deltas: Tensor, rois: Tensor, img: Tensor, sizes: Tensor,
               n) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Softmax, per-class boxes, clip, score > thresh, NMS, top `detections_per_img` per image.

        scores [R,K+1], deltas [R,4(K+1)], rois [R,4] with their image index img [R], sizes [N,2] (h, w), n = N.
        Returns (boxes [D,4], labels [D], scores [D], image index [D]) by image, then descending score.
        NMS per (image, class), or per image with `class_agnostic_nms` (each RoI then keeps only its best
        class); `nms` picks hard NMS or Soft-NMS (vggdet/model/nms.py). Vectorised over the batch: one
        decode and one grouped NMS for all images. The eager model and the ONNX graph both run this.
        """
        k1 = self.num_classes + 1
        probs = F.softmax(scores.float(), dim=1)[:, 1:]  # [R,K]
        boxes = self.coder.decode(deltas.float(), rois.float()).reshape(-1, k1, 4)[:, 1:]
        boxes = clip_boxes(boxes, sizes[img][:, None, :])
        if self.class_agnostic_nms:  # one candidate per RoI: its best class and that class's box
            probs, best = probs.max(dim=1, keepdim=True)
            boxes = boxes.gather(1, best[..., None].expand(-1, -1, 4))
            labels = best + 1
        else:
            labels = torch.arange(1, k1, device=boxes.device)[None].expand_as(probs)
        img = img[:, None].expand_as(probs)
        keep = probs > self.score_thresh
        boxes, probs, labels, img = boxes[keep], probs[keep], labels[keep], img[keep]
        keep = (boxes[:, 2:] - boxes[:, :2] > 1e-2).all(dim=1)
        boxes, probs, labels, img = boxes[keep], probs[keep], labels[keep], img[keep]
        groups = img if self.class_agnostic_nms else img * k1 + labels
        kept, probs = grouped_nms(boxes, probs, groups, method=self.nms, iou_thresh=self.nms_thresh,
                                  sigma=self.nms_sigma, min_score=self.soft_nms_min_score,
                                  extent=sizes.max())  # descending score
        top = rank_in_group(img[kept], n) < self.detections_per_img
        kept, probs = kept[top], probs[top]
        # by image, keeping the score order: sort on (image, position in the score order)
        pos = torch.arange(dim(kept, 0), device=kept.device)
        order = torch.argsort(img[kept] * (dim(kept, 0) + 1) + pos)
        kept, probs = kept[order], probs[order]
        return boxes[kept], labels[kept], probs, img[kept]
