"""Training augmentation with albumentations: boxes, their per-box flags and external proposals move together.

albumentations' "pascal_voc" box format is exactly our 0-based continuous xyxy. Ground-truth boxes may be
dropped by `min_visibility` after a crop; proposals must not be (their count is the model's input), so they
travel as corner keypoints that are never removed, and are clipped to the output image afterwards.
albumentations flips keypoints as pixel indices (x -> W - 1 - x) but boxes as continuous coordinates
(x -> W - x), and rescales keypoints by the float scale but boxes by the rounded image size; so the
scale jitter and the flip are done here, in continuous coordinates, for boxes and proposals alike.
No resize to the network scale here: that stays in the model.
"""
from __future__ import annotations

import warnings
from typing import Optional

import albumentations as A
import cv2
import numpy as np

from ..config import AugmentConfig

__all__ = ["DetectionTransform", "build_transform"]

_PER_BOX = ("labels", "difficult", "iscrowd")


class DetectionTransform:
    """(img, target) -> (img, target) with target["boxes"] / ["proposals"] transformed like the image."""

    def __init__(
        self,
        transforms: list,
        hflip: float = 0.0,
        scale_jitter: Optional[list] = None,
        min_visibility: float = 0.0,
        seed: Optional[int] = None,
    ) -> None:
        self.hflip, self.scale_jitter = hflip, scale_jitter
        self.rng = np.random.default_rng(seed)
        with warnings.catch_warnings():  # photometric-only pipelines: "processor ... but no transform"
            warnings.filterwarnings("ignore", message="Got processor for")
            self.compose = None if not transforms else A.Compose(
                transforms,
                bbox_params=A.BboxParams(format="pascal_voc", label_fields=["box_index"], min_visibility=min_visibility),
                keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
                seed=seed,
            )

    def set_seed(self, seed: int) -> None:
        if self.compose is not None:
            self.compose.set_random_seed(seed)
        self.rng = np.random.default_rng(seed)

    def __call__(self, img: np.ndarray, target: dict) -> tuple:
        if self.scale_jitter:
            img, target = rescale(img, target, float(self.rng.uniform(*self.scale_jitter)))
        if self.compose is not None:  # the default recipe is flip only: skip albumentations' overhead then
            img, target = self._albumentations(img, target)
        if self.hflip > 0 and self.rng.random() < self.hflip:
            img, target = hflip(img, target)
        return img, target

    def _albumentations(self, img: np.ndarray, target: dict) -> tuple:
        boxes, props = target["boxes"], target.get("proposals")
        corners = _corners(props) if props is not None else np.zeros((0, 2), dtype=np.float32)
        out = self.compose(image=img, bboxes=boxes, box_index=np.arange(len(boxes)), keypoints=corners)
        target = dict(target)
        idx = np.asarray(out["box_index"], dtype=np.int64)
        target["boxes"] = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        for k in _PER_BOX:
            target[k] = target[k][idx]
        if props is not None:
            target["proposals"] = _boxes_from_corners(np.asarray(out["keypoints"]), out["image"].shape[:2])
        return out["image"], target


def rescale(img: np.ndarray, target: dict, scale: float) -> tuple:
    """Resize by `scale`; boxes / proposals scale by the exact (rounded) output size ratio."""
    h, w = img.shape[:2]
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    factor = np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)
    target = dict(target)
    for k in ("boxes", "proposals"):
        if k in target:
            target[k] = (target[k] * factor).astype(np.float32)
    return img, target


def hflip(img: np.ndarray, target: dict) -> tuple:
    """Mirror the image and its boxes / proposals: x -> W - x in continuous coordinates."""
    w = img.shape[1]
    target = dict(target)
    for k in ("boxes", "proposals"):
        if k in target:
            b = target[k]
            target[k] = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1).astype(np.float32)
    return np.ascontiguousarray(img[:, ::-1]), target


def _corners(boxes: np.ndarray) -> np.ndarray:
    """[M, 4] xyxy -> [4M, 2] corner points (all four, so any flip or crop maps the box correctly)."""
    x1, y1, x2, y2 = boxes.T
    return np.stack([x1, y1, x2, y1, x1, y2, x2, y2], axis=1).reshape(-1, 2).astype(np.float32)


def _boxes_from_corners(points: np.ndarray, size: tuple) -> np.ndarray:
    pts = points[:, :2].reshape(-1, 4, 2)
    boxes = np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1).astype(np.float32)
    h, w = size
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    return boxes


def build_transform(aug: AugmentConfig, train: bool, seed: Optional[int] = None) -> Optional[DetectionTransform]:
    """The papers' recipe is a horizontal flip (p = aug.hflip); the rest is opt-in. None for test.

    Order: scale jitter, box-safe random crop (p 0.5), photometric jitter, horizontal flip."""
    if not train:
        return None
    ts: list = []
    if aug.random_crop:
        ts.append(A.BBoxSafeRandomCrop(erosion_rate=0.0, p=0.5))
    if aug.photometric:
        ts.append(A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5))
        ts.append(A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=0, p=0.5))
    if not ts and aug.hflip <= 0 and not aug.scale_jitter:
        return None
    return DetectionTransform(ts, hflip=aug.hflip, scale_jitter=aug.scale_jitter,
                              min_visibility=aug.min_visibility, seed=seed)
