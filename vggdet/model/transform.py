"""Input transform inside the model (like torchvision's GeneralizedRCNNTransform).

Images of any size -> normalised, resized (shorter side `min_size`, longer <= `max_size`) and zero-padded
into one batch tensor [N,3,H,W] with H, W multiples of 16. Detections are mapped back to input pixels.
"""
from __future__ import annotations

import random
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, 0..1 (torchvision VGG16 weights)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (102.9801, 115.9465, 122.7717)  # py-faster-rcnn's PIXEL_MEANS, BGR 0..255


class InputTransform(nn.Module):
    def __init__(self, *, min_size: Union[int, Sequence[int]], max_size: int, size_divisible: int = 16,
                 test_min_size: Optional[int] = None, caffe_input: bool = False):
        super().__init__()
        self.min_sizes = [min_size] if isinstance(min_size, int) else list(min_size)
        self.test_min_size = test_min_size or max(self.min_sizes)
        self.max_size = max_size
        self.size_divisible = size_divisible
        self.caffe_input = caffe_input
        if caffe_input:
            mean, std = torch.tensor(CAFFE_MEAN_BGR[::-1]) / 255.0, torch.full((3,), 1.0 / 255.0)
        else:
            mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("mean", mean.view(3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(3, 1, 1), persistent=False)

    def scale_for(self, h: int, w: int, min_size: int) -> float:
        """The resize factor: shorter side -> min_size unless the longer side would exceed max_size."""
        short, long = min(h, w), max(h, w)
        return min(min_size / short, self.max_size / long)

    def forward(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]], list[tuple[float, float]]]:
        """images: list of [3,H,W] RGB (float 0..1 or uint8 0..255) -> (batch, sizes, (sx, sy) scales).

        One shorter-side target per batch (random from the list in training: multi-scale training).
        """
        min_size = random.choice(self.min_sizes) if self.training else self.test_min_size
        resized, sizes, scales = [], [], []
        for img in images:
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"expected images of shape [3,H,W], got {tuple(img.shape)}")
            x = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            x = (x - self.mean) / self.std
            if self.caffe_input:
                x = x.flip(0)  # RGB -> BGR after subtracting the (reversed) BGR means
            h, w = x.shape[-2:]
            s = self.scale_for(h, w, min_size)
            nh, nw = int(round(h * s)), int(round(w * s))
            x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
            resized.append(x)
            sizes.append((nh, nw))
            scales.append((nw / w, nh / h))  # exact per-axis factors after rounding
        return self.batch(resized), sizes, scales

    def batch(self, images: list[Tensor]) -> Tensor:
        d = self.size_divisible
        h = max(i.shape[1] for i in images)
        w = max(i.shape[2] for i in images)
        h, w = (h + d - 1) // d * d, (w + d - 1) // d * d
        out = images[0].new_zeros(len(images), 3, h, w)
        for o, i in zip(out, images):
            o[:, : i.shape[1], : i.shape[2]].copy_(i)
        return out
