"""Shared benchmark helpers: the torchvision twin of a vggdet model, test images, timers, machine info.

The twin is torchvision's FasterRCNN assembled from the same parts and weights: VGG16 features[:30],
the RPN head, 9 anchors at stride 16 (AnchorGenerator sizes (128, 256, 512) x ratios (0.5, 1, 2)),
RoIPool 7x7 at 1/16 (vggdet's default pooling; torchvision's default MultiScaleRoIAlign is replaced so
both pool alike), fc6/fc7 (TwoMLPHead) and the predictor, proposals 6000 -> 300 at test and
12000 -> 2000 in training, min_size 600, max_size 1000, ImageNet mean/std, padding to a multiple of 16.
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import sys
import time

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import AnchorGenerator, RPNHead
from torchvision.ops import roi_align, roi_pool

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vggdet.model.transform import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


class ToChannelsLast(nn.Module):
    def forward(self, x):
        return x.contiguous(memory_format=torch.channels_last)


class SingleLevelRoIPool(nn.Module):
    """torchvision's box_roi_pool interface (features dict, proposals, image_shapes) over one level."""

    def __init__(self, kind: str, size: int = 7, scale: float = 1 / 16, sampling_ratio: int = 2):
        super().__init__()
        self.kind, self.size, self.scale, self.sampling_ratio = kind, size, scale, sampling_ratio

    def forward(self, features, proposals, image_shapes):
        x = features["0"]
        if x.device.type == "cpu" and x.dtype != torch.float32:  # torchvision has no CPU bf16 roi_pool
            x, proposals = x.float(), [p.float() for p in proposals]
        if self.kind == "align":
            return roi_align(x, proposals, self.size, self.scale, self.sampling_ratio, aligned=True)
        return roi_pool(x, proposals, self.size, self.scale)


def torchvision_twin(model, *, channels_last: bool = False) -> TVFasterRCNN:
    """torchvision FasterRCNN with the same layers and weights as a vggdet (RPN) model."""
    rpn, head, m_in = model.rpn, model.roi_head, model.transform
    features = [ToChannelsLast()] if channels_last else []
    features += [layer for layer in _clone(model.backbone.body)]
    backbone = nn.Sequential(*features)
    backbone.out_channels = model.backbone.out_channels
    scales = [float(s) * rpn.stride for s in (8, 16, 32)]
    anchors = AnchorGenerator(sizes=(tuple(scales),), aspect_ratios=((0.5, 1.0, 2.0),))
    rpn_head = RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0])
    box_head = TwoMLPHead(head.fc6.in_features, head.fc6.out_features)
    predictor = FastRCNNPredictor(head.cls_score.in_features, head.cls_score.out_features)
    tv = TVFasterRCNN(
        backbone, num_classes=None, min_size=m_in.test_min_size, max_size=m_in.max_size,
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), size_divisible=m_in.size_divisible,
        rpn_anchor_generator=anchors, rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n[0], rpn_post_nms_top_n_train=rpn.post_nms_top_n[0],
        rpn_pre_nms_top_n_test=rpn.pre_nms_top_n[1], rpn_post_nms_top_n_test=rpn.post_nms_top_n[1],
        rpn_nms_thresh=rpn.nms_thresh, rpn_fg_iou_thresh=rpn.fg_iou, rpn_bg_iou_thresh=rpn.bg_iou,
        rpn_batch_size_per_image=rpn.batch_size_per_image, rpn_positive_fraction=rpn.positive_fraction,
        box_head=box_head, box_predictor=predictor, box_score_thresh=head.score_thresh,
        box_nms_thresh=head.nms_thresh, box_detections_per_img=head.detections_per_img,
        box_fg_iou_thresh=head.fg_iou, box_bg_iou_thresh=head.bg_iou_hi,
        box_batch_size_per_image=head.batch_size_per_image, box_positive_fraction=head.fg_fraction,
        bbox_reg_weights=tuple(1.0 / s for s in head.coder.stds))
    # FasterRCNN's constructor only accepts MultiScaleRoIAlign: swap the pooling in afterwards.
    tv.roi_heads.box_roi_pool = SingleLevelRoIPool(head.pool, head.pool_size, head.spatial_scale, head.sampling_ratio)
    with torch.no_grad():
        rpn_head.conv[0][0].load_state_dict(rpn.conv.state_dict())
        rpn_head.cls_logits.load_state_dict(rpn.cls_logits.state_dict())
        rpn_head.bbox_pred.load_state_dict(rpn.bbox_pred.state_dict())
        box_head.fc6.load_state_dict(head.fc6.state_dict())
        box_head.fc7.load_state_dict(head.fc7.state_dict())
        predictor.cls_score.load_state_dict(head.cls_score.state_dict())
        predictor.bbox_pred.load_state_dict(head.bbox_pred.state_dict())
    n_frozen = sum(1 for p in model.backbone.body.parameters() if not p.requires_grad)
    for i, p in enumerate(backbone.parameters()):  # the same frozen layers (conv1, conv2)
        p.requires_grad_(i >= n_frozen)
    return tv.to(next(model.parameters()).device)


def _clone(body: nn.Sequential) -> nn.Sequential:
    import copy

    return copy.deepcopy(body)


def jpeg_like_images(n: int, h: int = 375, w: int = 500, seed: int = 0, device="cpu") -> list:
    """Smooth random RGB images in 0..1 (low-frequency blobs plus a little noise), like photos."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        low = torch.rand(1, 3, h // 25 + 1, w // 25 + 1, generator=g)
        img = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)[0]
        img = (img + 0.05 * torch.randn(3, h, w, generator=g)).clamp(0, 1)
        out.append(img.to(device))
    return out


def random_targets(n: int, h: int, w: int, num_classes: int, seed: int = 0, device="cpu") -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = 3
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 40 + torch.rand(k, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([xy, xy + wh], 1)
        out.append({"boxes": boxes.to(device), "labels": torch.randint(1, num_classes + 1, (k,), generator=g).to(device)})
    return out


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def autocast(device, dtype: str | None):
    if not dtype:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype))


def median(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def random_checkpoint(path: str, config: str | None = None, overrides: tuple = ()) -> str:
    """A checkpoint of `config` (None: the defaults, VOC's 20 classes) with seeded random weights, written to
    `path` (no ImageNet weights: nothing is downloaded); its classes from `data.classes`, else class1..N."""
    from vggdet import build_detector, load_config
    from vggdet.training.checkpoint import make_checkpoint, save_checkpoint

    cfg = load_config(config, ["model.backbone.weights=null", *overrides])
    torch.manual_seed(0)
    classes = cfg.data.classes if isinstance(cfg.data.classes, list) else \
        [f"class{k}" for k in range(1, cfg.model.num_classes + 1)]
    save_checkpoint(path, make_checkpoint(build_detector(cfg), cfg, classes))
    return path


def machine(device: str = "cpu") -> str:
    import torchvision

    from vggdet.runtime import cpu_flags, cpu_model

    cpu = cpu_model()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    flags = " ".join(f for f in wanted if f in cpu_flags()) or "none of " + "/".join(wanted)

    s = (f"CPU {cpu} [flags: {flags}] ({os.cpu_count()} cores visible), "
         f"torch.get_num_threads()={torch.get_num_threads()}, "
         f"torch {torch.__version__}, torchvision {torchvision.__version__}, Python {platform.python_version()}")
    if torch.device(device).type == "cuda":
        s += f", GPU {torch.cuda.get_device_name()}"
    return s
