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
from vggdet.runtime import (
    autocast,
    check_batch,
    check_single,
    detections_to_numpy,
    finish_detections,
    groups_by_size,
    inference_dtype,
    resolve_device,
    rgb_input,
)

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
        self.dtype = inference_dtype(config, self.device) if config is not None else None
        tta = config.test.tta if config is not None else None
        self.model = (with_tta(model, tta.hflip, tta.scales) if tta else model).to(self.device).eval()
        self.classes = list(classes)

    @classmethod
    def from_checkpoint(cls, path: str, device: Optional[str] = None, config: Optional[str] = None,
                        overrides: Optional[list] = None) -> Detector:
        """A checkpoint (its embedded config, or the CONFIG file `config`) with `key=value` overrides.

        A `.onnx` file from tools/export.py gives an `OnnxDetector` (vggdet/onnx_predictor.py) instead: the
        same predict / predict_batch / classes / config, run by onnxruntime.
        """
        from vggdet.onnx_predictor import OnnxDetector, is_onnx_file

        if is_onnx_file(path):
            if config is not None:
                raise ValueError(f"{path}: an ONNX export carries its config; drop the CONFIG argument")
            return OnnxDetector(path, None if device is None else str(device), overrides)
        model, cfg, classes = load_detector(path, config, overrides)
        return cls(model, classes, device, cfg)

    def _to_tensor(self, image: ImageLike) -> torch.Tensor:
        image = rgb_input(image)
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return image.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def predict_batch(self, images: list, score_thresh: Optional[float] = None) -> list:
        """-> per image {"boxes" [D,4] float32 xyxy, "scores" [D], "labels" [D] in 1..K, "names" [D]},
        keeping scores >= `score_thresh` when given (the model's own cut-off applies first)."""
        check_batch(images, score_thresh)
        tensors = [self._to_tensor(i) for i in images]
        dets: list = [None] * len(tensors)
        with autocast(self.device, self.dtype):
            for idx in groups_by_size([t.shape[-2:] for t in tensors]):
                for k, d in zip(idx, self.model([tensors[k] for k in idx])):
                    dets[k] = d
        return [finish_detections(detections_to_numpy(d), score_thresh, self.classes) for d in dets]

    def predict(self, image: ImageLike, score_thresh: Optional[float] = None) -> dict:
        """One image -> its detections (see `predict_batch`)."""
        check_single(image)
        return self.predict_batch([image], score_thresh)[0]
