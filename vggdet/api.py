"""High-level inference: `Detector.from_checkpoint(path).predict(image)`."""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from vggdet.checkpoint import config_from_checkpoint, load_checkpoint, load_model_state
from vggdet.model.detector import FasterRCNN, build_detector

ImageLike = Union[str, np.ndarray, torch.Tensor]


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return torch.device(device)


def detections_to_numpy(det: dict) -> dict:
    """One image's model output (tensors on any device, any float dtype) -> float32 / int64 numpy arrays."""
    return {"boxes": det["boxes"].float().cpu().numpy(), "labels": det["labels"].cpu().numpy(),
            "scores": det["scores"].float().cpu().numpy()}


class Detector:
    """A model in eval mode with its class names; inputs are paths, HxWx3 uint8 RGB arrays or tensors."""

    def __init__(self, model: FasterRCNN, classes: list, device: Union[str, torch.device] = "auto"):
        self.config = None
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.classes = list(classes)

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "auto", config: Optional[str] = None,
                        overrides: Optional[list] = None) -> Detector:
        ckpt = load_checkpoint(path)
        cfg = config_from_checkpoint(ckpt, path, config, overrides)
        model = build_detector(cfg, load_weights=False)
        load_model_state(model, ckpt["model"], path)
        classes = ckpt.get("classes") or [f"class{i}" for i in range(1, cfg.model.num_classes + 1)]
        det = cls(model, classes, device)
        det.config = cfg
        return det

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
    def predict_batch(self, images: list) -> list:
        """-> per image {"boxes" [D,4] float32 xyxy, "scores" [D], "labels" [D] in 1..K, "names" [D]}."""
        out = [detections_to_numpy(d) for d in self.model([self._to_tensor(i) for i in images])]
        for d in out:
            d["names"] = [self.classes[int(c) - 1] for c in d["labels"]]
        return out

    def predict(self, image: ImageLike) -> dict:
        return self.predict_batch([image])[0]
