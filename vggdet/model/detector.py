"""The detector: the whole pipeline in `forward`, and `build_detector`, the one place config becomes modules."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from vggdet.config import Config
from vggdet.model.backbone import VGGBackbone, load_backbone_weights, load_vgg_state_dict
from vggdet.model.roi_head import RoIHead
from vggdet.model.rpn import RPN
from vggdet.model.transform import InputTransform


class FasterRCNN(nn.Module):
    """VGG16 Faster R-CNN, or classic Fast R-CNN when `rpn` is None (external proposals).

    images: list of [3,H,W] RGB tensors (float 0..1 or uint8), any sizes.
    targets (training): list of {"boxes": [G,4] xyxy float, "labels": [G] int64 in 1..K,
    and "proposals": [P,4] in external-proposals mode}, in input-image pixels.
    Returns the loss dict in training, else per image {"boxes" [D,4], "labels" [D], "scores" [D]} in
    input-image pixels.

    `model.eval()` / `model.train()` are plain PyTorch: running a trained model fast on the CPU (Winograd
    convs, precision, TTA) is the predictor's business (vggdet/inference/torch_backend.py).
    """

    def __init__(self, transform: InputTransform, backbone: VGGBackbone, rpn: Optional[RPN], roi_head: RoIHead):
        super().__init__()
        self.transform, self.backbone, self.rpn, self.roi_head = transform, backbone, rpn, roi_head
        # Memory format of the conv input: True / False force it; None = auto (see `_channels_last`).
        self.channels_last: Optional[bool] = None

    def forward(self, images: list[Tensor], targets: Optional[list[dict]] = None,
                proposals: Optional[list[Tensor]] = None):
        if self.training and targets is None:
            raise ValueError("training mode needs targets; call model.eval() for detection")
        batch, sizes, scales = self.transform(images)
        gt = [self._scale_target(t, s) for t, s in zip(targets, scales)] if self.training else None
        if self._channels_last(batch):
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = self.backbone(batch)
        if self.rpn is not None:
            rois, losses = self.rpn(features, sizes, [(sx + sy) / 2 for sx, sy in scales],
                                    [t["boxes"] for t in gt] if gt is not None else None)
        else:
            rois, losses = self._external(proposals, gt, sizes, scales), {}
        detections, head_losses = self.roi_head(features, rois, sizes, gt)
        if self.training:
            return {**losses, **head_losses}
        return [self._rescale(d, s) for d, s in zip(detections, scales)]

    def _channels_last(self, batch: Tensor) -> bool:
        """Auto: NHWC for CPU inference (oneDNN's native layout: the VGG convs run ~1.3x faster) and on
        CUDA under autocast (tensor cores want NHWC); NCHW otherwise. CPU training stays NCHW unless
        asked for (`runtime.channels_last=True`): the rounding differences change a training trajectory.
        Detections are equal up to float rounding either way (tests/test_winograd.py)."""
        if self.channels_last is not None:
            return self.channels_last
        if batch.device.type == "cpu":
            return not self.training
        return batch.device.type == "cuda" and torch.is_autocast_enabled("cuda")

    @staticmethod
    def _scale_target(t: dict, scale: tuple) -> dict:
        s = _xyxy_factors(scale, t["boxes"].float())
        out = {"boxes": t["boxes"].float().reshape(-1, 4) * s, "labels": t["labels"].to(torch.int64)}
        if "proposals" in t:
            out["proposals"] = t["proposals"].float().reshape(-1, 4) * s
        return out

    def _external(self, proposals, gt, sizes, scales) -> list[Tensor]:
        """External proposals (classic Fast R-CNN), scaled to the network input and clipped."""
        if gt is not None:
            if any("proposals" not in t for t in gt):
                raise ValueError("model.proposals='external': every target needs a 'proposals' tensor")
            props = [t["proposals"] for t in gt]
        else:
            if proposals is None or len(proposals) != len(sizes):
                raise ValueError("model.proposals='external': call model(images, proposals=[...]) with one "
                                 "[P,4] tensor per image")
            dev = self.transform.mean.device
            props = [p.float().reshape(-1, 4).to(dev) * _xyxy_factors(s, self.transform.mean)
                     for p, s in zip(proposals, scales)]
        out = []
        for p, (h, w) in zip(props, sizes):
            p = torch.minimum(p.clamp(min=0), p.new_tensor([w, h, w, h]))
            out.append(p[(p[:, 2] > p[:, 0]) & (p[:, 3] > p[:, 1])])
        return out

    @staticmethod
    def _rescale(det: dict, scale: tuple) -> dict:
        return {**det, "boxes": det["boxes"] / _xyxy_factors(scale, det["boxes"])}


def _xyxy_factors(scale: tuple, like: Tensor) -> Tensor:
    """(sx, sy) -> [sx, sy, sx, sy] with `like`'s dtype and device, to scale xyxy boxes."""
    return like.new_tensor([scale[0], scale[1], scale[0], scale[1]])


def build_detector(cfg: Config, load_weights: bool = True) -> FasterRCNN:
    """Config -> model. Loads `model.backbone.weights` (VGG16 convs and fc6/fc7) when set."""
    m = cfg.model
    backbone = VGGBackbone(depth=m.backbone.depth, width=m.backbone.width, freeze_at=m.backbone.freeze_at,
                             batch_norm=m.backbone.batch_norm)
    transform = InputTransform(min_size=m.input.min_size, max_size=m.input.max_size,
                               size_divisible=m.input.size_divisible, test_min_size=m.input.test_min_size,
                               caffe_input=m.backbone.caffe_input)
    rpn = None
    if m.proposals == "rpn":
        r = m.rpn
        rpn = RPN(in_channels=backbone.out_channels, conv_channels=r.conv_channels, stride=backbone.stride,
                  scales=r.anchor_scales, ratios=r.anchor_ratios, fg_iou=r.fg_iou, bg_iou=r.bg_iou,
                  batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction,
                  allowed_border=r.allowed_border, pre_nms_top_n=(r.pre_nms_top_n_train, r.pre_nms_top_n_test),
                  post_nms_top_n=(r.post_nms_top_n_train, r.post_nms_top_n_test), nms_thresh=r.nms_thresh,
                  min_size=r.min_size, sigma=r.sigma)
    h = m.roi_head
    score_thresh = cfg.runtime.score_thresh if cfg.runtime.score_thresh is not None else h.score_thresh
    roi_head = RoIHead(in_channels=backbone.out_channels, num_classes=m.num_classes, pool=h.pool,
                       pool_size=h.pool_size, spatial_scale=1.0 / backbone.stride, sampling_ratio=h.sampling_ratio,
                       fc_dim=h.fc_dim, fc6_rank=h.fc6_rank, fc7_rank=h.fc7_rank, dropout=h.dropout,
                       batch_size_per_image=h.batch_size_per_image, fg_fraction=h.fg_fraction, fg_iou=h.fg_iou,
                       bg_iou_hi=h.bg_iou_hi, bg_iou_lo=h.bg_iou_lo, bbox_stds=tuple(h.bbox_stds), sigma=h.sigma,
                       score_thresh=score_thresh, nms_thresh=h.nms_thresh, detections_per_img=h.detections_per_img,
                       nms=h.nms, nms_sigma=h.nms_sigma, soft_nms_min_score=h.soft_nms_min_score,
                       class_agnostic_nms=h.class_agnostic_nms)
    if load_weights and m.backbone.weights:
        sd = load_vgg_state_dict(m.backbone.weights, m.backbone.depth, m.backbone.batch_norm)
        fc6 = roi_head.fc6 if isinstance(roi_head.fc6, nn.Linear) else None
        fc7 = roi_head.fc7 if isinstance(roi_head.fc7, nn.Linear) else None
        load_backbone_weights(backbone, fc6, fc7, sd, source=m.backbone.weights)
    model = FasterRCNN(transform, backbone, rpn, roi_head)
    model.channels_last = cfg.runtime.channels_last  # None = auto, True / False = forced
    return model
