"""The predictor: `Detector.from_checkpoint(path).predict(image)` -> boxes, scores, labels and class names.

A model in eval mode on its device with its class names. Inputs are image paths, HxWx3 uint8 RGB arrays or
[3,H,W] tensors; outputs are numpy arrays in input-image pixels (xyxy, 0-based, continuous).
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from vggdet.checkpoint import load_detector
from vggdet.model.detector import FasterRCNN
from vggdet.model.tta import with_tta
from vggdet.runtime import amp_dtype, autocast, detections_to_numpy, resolve_device

__all__ = ["Detector", "ImageLike"]

ImageLike = Union[str, np.ndarray, torch.Tensor]


class Detector:
    """`device`: None = `config.runtime.device` (auto when there is no config); `config` (a Config) also
    sets the autocast rule (`runtime.amp`)."""

    def __init__(self, model: FasterRCNN, classes: list, device: Optional[Union[str, torch.device]] = None,
                 config=None):
        self.config = config
        runtime = config.runtime if config is not None else None
        self.device = resolve_device(device if device is not None else runtime.device if runtime else None)
        self.dtype = amp_dtype(runtime, self.device) if runtime is not None else None
        tta = config.test.tta if config is not None else None
        self.model = (with_tta(model, tta.hflip, tta.scales) if tta else model).to(self.device).eval()
        self.classes = list(classes)

    @classmethod
    def from_checkpoint(cls, path: str, device: Optional[str] = None, config: Optional[str] = None,
                        overrides: Optional[list] = None) -> Detector:
        """A checkpoint (its embedded config, or the CONFIG file `config`) with `key=value` overrides."""
        model, cfg, classes = load_detector(path, config, overrides)
        return cls(model, classes, device, cfg)

    def _to_tensor(self, image: ImageLike) -> torch.Tensor:
        if isinstance(image, str):
            from vggdet.data.image_io import read_image

            image = read_image(image)
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected an HxWx3 uint8 RGB array, got {image.shape} {image.dtype}")
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return image.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def predict_batch(self, images: list, score_thresh: Optional[float] = None) -> list:
        """-> per image {"boxes" [D,4] float32 xyxy, "scores" [D], "labels" [D] in 1..K, "names" [D]},
        keeping scores >= `score_thresh` when given (the model's own cut-off applies first)."""
        if not isinstance(images, (list, tuple)):
            raise TypeError(f"predict_batch takes a list of images, got {type(images).__name__}; use predict()")
        if score_thresh is not None and not 0.0 <= score_thresh <= 1.0:
            raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
        tensors = [self._to_tensor(i) for i in images]
        # One forward per image size: padding a mixed-size batch to its largest image changes the features
        # near the padded edges, so the batch size would change the detections, not just the speed.
        by_size: dict = {}
        for k, t in enumerate(tensors):
            by_size.setdefault(tuple(t.shape[-2:]), []).append(k)
        dets: list = [None] * len(tensors)
        with autocast(self.device, self.dtype):
            for idx in by_size.values():
                for k, d in zip(idx, self.model([tensors[k] for k in idx])):
                    dets[k] = d
        out = [detections_to_numpy(d) for d in dets]
        for d in out:
            if score_thresh is not None:
                keep = d["scores"] >= score_thresh
                d.update(boxes=d["boxes"][keep], labels=d["labels"][keep], scores=d["scores"][keep])
            d["names"] = [self.classes[int(c) - 1] for c in d["labels"]]
        return out

    def predict(self, image: ImageLike, score_thresh: Optional[float] = None) -> dict:
        """One image -> its detections (see `predict_batch`)."""
        if isinstance(image, (list, tuple)):
            raise TypeError(f"predict takes one image, got a {type(image).__name__} of {len(image)}; "
                            "use predict_batch() for several")
        return self.predict_batch([image], score_thresh)[0]
