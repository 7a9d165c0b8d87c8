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


def resized_size(hw: Tensor, min_size: int, max_size: int) -> Tensor:
    """(h, w) [..., 2] float64 -> the network size (h, w) int64: the shorter side to `min_size` unless the
    longer side would exceed `max_size`. Float64 and round-half-even, like Python's floats and round(); the
    eager model and the ONNX graph (vggdet/deploy/export.py) both size images by this function."""
    short, long = torch.minimum(hw[..., 0], hw[..., 1]), torch.maximum(hw[..., 0], hw[..., 1])
    s = torch.minimum(min_size / short, max_size / long)
    return torch.round(hw * s[..., None]).clamp(min=1).to(torch.int64)  # a 1x4000 image: not 0 px high


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

    def normalize(self, x: Tensor) -> Tensor:
        """[..., 3, H, W] RGB (uint8 0..255 or float 0..1) -> the network's input values (float32)."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = (x - self.mean) / self.std
        return x.flip(-3) if self.caffe_input else x  # RGB -> BGR after subtracting the (reversed) BGR means

    def forward(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]], list[tuple[float, float]]]:
        """images: list of [3,H,W] RGB (float 0..1 or uint8 0..255) -> (batch, sizes, (sx, sy) scales).

        One shorter-side target per batch (random from the list in training: multi-scale training).
        """
        min_size = random.choice(self.min_sizes) if self.training else self.test_min_size
        resized, sizes, scales = [], [], []
        for img in images:
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"expected images of shape [3,H,W], got {tuple(img.shape)}")
            x = self.normalize(img)
            h, w = x.shape[-2:]
            nh, nw = resized_size(torch.tensor([h, w], dtype=torch.float64), min_size, self.max_size).tolist()
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
