"""Test-time augmentation: the detector on the flipped image and at extra scales, merged per class.

`with_tta(model, hflip=True, scales=[480, 720])` wraps a FasterRCNN in eval mode; its forward takes the
same images and returns the same per-image dicts. Every run's boxes come back in input-image pixels (the
model maps its own resize back; a horizontal flip is undone here: x1' = W - x2, x2' = W - x1), then all
runs' detections are merged by per-class NMS at `model.roi_head.nms_thresh` and cut to
`detections_per_img`. Box voting is not used: NMS keeps each merged box exactly as one run predicted it.
Without flips or scales `with_tta` returns the model itself, so the plain path pays nothing.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

__all__ = ["TestTimeAugmentation", "with_tta"]


def with_tta(model: nn.Module, hflip: bool = False, scales: Sequence[int] = ()) -> nn.Module:
    """`model` wrapped for test-time augmentation, or `model` itself when there is nothing to add."""
    if not hflip and not scales:
        return model
    if getattr(model, "rpn", None) is None:
        raise ValueError("test.tta needs a model with an RPN (external proposals are not flipped or rescaled)")
    return TestTimeAugmentation(model, hflip=hflip, scales=scales)


class TestTimeAugmentation(nn.Module):
    __test__ = False  # a class named Test*: not for pytest to collect

    def __init__(self, model: nn.Module, *, hflip: bool, scales: Sequence[int]):
        super().__init__()
        self.model, self.hflip, self.scales = model, hflip, [int(s) for s in scales]

    def forward(self, images: list[Tensor]) -> list[dict]:
        runs = []
        for scale in [None, *self.scales]:  # None: the model's own test scale
            with self._test_scale(scale):
                for flip in (False, True) if self.hflip else (False,):
                    dets = self.model([i.flip(-1) for i in images] if flip else images)
                    runs.append([_unflip(d, i.shape[-1]) for d, i in zip(dets, images)] if flip else dets)
        return [self._merge([run[n] for run in runs]) for n in range(len(images))]

    @contextlib.contextmanager
    def _test_scale(self, scale: Optional[int]) -> Iterator[None]:
        """Run the model's input transform at shorter side `scale` (its longer-side cap scaled alike)."""
        t = self.model.transform
        old = (t.test_min_size, t.max_size)
        if scale is not None:
            t.test_min_size, t.max_size = scale, int(round(t.max_size * scale / t.test_min_size))
        try:
            yield
        finally:
            t.test_min_size, t.max_size = old

    def _merge(self, dets: list[dict]) -> dict:
        boxes = torch.cat([d["boxes"] for d in dets])
        scores = torch.cat([d["scores"] for d in dets])
        labels = torch.cat([d["labels"] for d in dets])
        head = self.model.roi_head
        keep = batched_nms(boxes.float(), scores.float(), labels, head.nms_thresh)[: head.detections_per_img]
        return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}


def _unflip(det: dict, width: int) -> dict:
    """Boxes found on the horizontally flipped image -> the same boxes on the original (xyxy pixels)."""
    b = det["boxes"]
    return {**det, "boxes": torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)}
