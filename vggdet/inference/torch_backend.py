"""The PyTorch predictor: a trained `FasterRCNN` in eval mode on its device, run the way the config says.

`TorchPredictor(model, classes, device, config)` (alias `Detector`, the package's public name) applies
what running a model involves and `model.eval()` does not: the device, the precision (`runtime.amp` /
`runtime.precision`: vggdet/runtime.py), test-time augmentation (`test.tta`) and the conversion to the CPU kernels (prepacked oneDNN convs and fc layers, Winograd) of
the 3x3 convs for CPU inference with its timing cache (vggdet/inference/tuning.py). `close()` undoes the
conversion, so a model borrowed for evaluation (the trainer's) goes back unchanged.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from vggdet import distributed as ddp
from vggdet.inference.base import Predictor
from vggdet.inference.tuning import convert_for_inference
from vggdet.model import cpu_kernels
from vggdet.model.detector import FasterRCNN
from vggdet.model.tta import with_tta
from vggdet.runtime import autocast, inference_precision, precision_name, resolve_device

__all__ = ["TorchPredictor", "Detector", "detections_to_numpy"]


def detections_to_numpy(det: dict) -> dict:
    """One image's model output (tensors on any device, any float dtype) -> float32 / int64 numpy arrays."""
    return {"boxes": det["boxes"].float().cpu().numpy(), "labels": det["labels"].cpu().numpy(),
            "scores": det["scores"].float().cpu().numpy()}


class TorchPredictor(Predictor):
    """`device`: None = `config.runtime.device` (auto without a config). `dtype`: the autocast dtype, or
    "config" for the config's inference rule (`runtime.inference_precision`: runtime.precision / amp). `tta`: False skips `test.tta`.
    The trainer's evaluation passes its training dtype and `tta=False`."""

    backend = "pytorch"
    cutoff_hint = "load it with runtime.score_thresh={asked:g} (--set, or tools/infer.py --score-thr) for lower scores"

    def __init__(self, model: FasterRCNN, classes: list, device: Optional[Union[str, torch.device]] = None,
                 config=None, *, dtype: Union[str, None, torch.dtype] = "config", tta: bool = True):
        runtime = config.runtime if config is not None else None
        self.config = config
        self.classes = list(classes)
        # under torchrun each process takes the GPU of its LOCAL_RANK
        self.device = ddp.local_device(resolve_device(device if device is not None else runtime.device if runtime
                                                      else None))
        if runtime is not None and runtime.threads:
            torch.set_num_threads(runtime.threads)  # per process: before the kernels are timed, which depends on it
        self.precision_reason = "given"
        if dtype == "config":
            dtype, self.precision_reason = (inference_precision(config, self.device) if config is not None
                                            else (None, "no config: fp32"))
        self.dtype = dtype
        self.precision = precision_name(dtype)
        self.base_model = model.to(self.device).eval()
        self.converted = convert_for_inference(model, runtime, self.device) if runtime is not None else 0
        t = config.test.tta if config is not None and tta else None
        self.model = with_tta(model, t.hflip, t.scales).eval() if t else model
        self.min_score = getattr(getattr(model, "roi_head", None), "score_thresh", None)

    @classmethod
    def load(cls, path: str, device: Optional[str] = None, config: Optional[str] = None,
             overrides: Optional[list] = None) -> TorchPredictor:
        """A checkpoint (its embedded config, or the CONFIG file `config`) with `key=value` overrides."""
        from vggdet.training.checkpoint import load_detector

        model, cfg, classes = load_detector(path, config, overrides)
        predictor = cls(model, classes, device, cfg)
        predictor.source = path
        return predictor

    def _prepare(self, image) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return image.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def _forward(self, inputs: list, proposals: Optional[list] = None) -> list:
        with autocast(self.device, self.dtype):
            if proposals is None:
                dets = self.model(inputs)
            else:
                dets = self.model(inputs, proposals=[torch.as_tensor(p, device=self.device) for p in proposals])
        return [detections_to_numpy(d) for d in dets]

    def close(self) -> None:
        """Plain convs again (the model stays in eval mode on its device)."""
        if self.converted:
            cpu_kernels.revert(self.base_model)
            self.converted = 0


Detector = TorchPredictor  # the public name since 0.1 (`from vggdet import Detector`)
