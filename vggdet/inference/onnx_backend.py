"""The ONNX Runtime predictor: `load_predictor("model.onnx")` -> the same interface as the PyTorch one.

Runs a file written by tools/export.py or tools/quantize.py (vggdet/deploy/) in onnxruntime; no PyTorch
model code runs. The class names and the config come from the file's metadata; the shared behaviour
(input rules, size grouping, the score / class filter) is vggdet/inference/base.py's.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from vggdet.config import Config, ConfigError, apply_overrides
from vggdet.errors import first_line
from vggdet.inference.base import Predictor, is_onnx_file

__all__ = ["OnnxPredictor", "OnnxModelError", "is_onnx_file", "OnnxDetector"]


class OnnxModelError(ValueError):
    """An .onnx file that cannot be used: unreadable, not a vggdet export, or no runtime to run it."""


def _session(path: str, device: Optional[str], threads: Optional[int] = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxModelError(f"{path}: running an ONNX model needs onnxruntime: pip install 'vggdet[export]' "
                             "(or onnxruntime-gpu for --device cuda)") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such ONNX file")
    available = ort.get_available_providers()
    if device in (None, "auto"):
        device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise OnnxModelError(f"--device {device}: this onnxruntime has no CUDA execution provider; "
                                 "pip install onnxruntime-gpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    elif device == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise ValueError(f"--device {device}: not a device for onnxruntime (auto, cpu, cuda or cuda:N)")
    try:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        return ort.InferenceSession(path, options, providers=providers), device
    except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        raise OnnxModelError(f"{path}: not a readable ONNX model ({first_line(e)})") from None


def _check_int8_device(path: str, device: str) -> None:
    """int8 exports run on the CPU: onnxruntime's CUDA provider has no int8 conv kernels, and x86 CPUs
    without AVX2 have no fast ones."""
    from vggdet.runtime import cpu_flags, cpu_model

    if device.startswith("cuda"):
        raise OnnxModelError(f"{path}: an int8 model runs on the CPU (onnxruntime's CUDA provider has no int8 "
                             "convolutions); use --device cpu, or the float32 export on the GPU")
    flags = cpu_flags()
    if flags and "avx2" not in flags:
        raise OnnxModelError(f"{path}: this CPU ({cpu_model()}) has no AVX2, so int8 would be slower than "
                             "float32; use the float32 export (tools/export.py)")


def _override(overrides: Optional[list], key: str) -> Optional[str]:
    """The value of the last `key=value` item for `key` (needed before the session, which holds the config)."""
    values = [o.split("=", 1)[1].strip() for o in overrides or [] if o.split("=", 1)[0].strip() == key]
    return values[-1] if values else None


class OnnxPredictor(Predictor):
    """A vggdet export in onnxruntime. `overrides`: `key=value` items for data.* / test.* (e.g. the dataset
    root for tools/test_det.py) and runtime.score_thresh (a stricter cut-off than the export's); model.* is
    fixed in the file."""

    backend = "onnxruntime"
    cutoff_hint = "export again with --score-thr {asked:g} for lower scores (the cut-off is part of the graph)"

    def __init__(self, path: str, device: Optional[str] = None, overrides: Optional[list] = None):
        self.path = self.source = path
        if device is None:  # runtime.device=... among the overrides (tools pass --device that way)
            device = _override(overrides, "runtime.device")
        threads = _override(overrides, "runtime.threads")  # a bad value is named by _apply's config check
        self.session, self.device = _session(path, device, int(threads) if (threads or "").isdigit() else None)
        meta = self.session.get_modelmeta().custom_metadata_map
        if "vggdet_format" not in meta:
            raise OnnxModelError(f"{path}: not a vggdet export (no vggdet metadata); write one with "
                                 "tools/export.py CHECKPOINT --out model.onnx")
        self.classes = json.loads(meta["classes"])
        self.config = Config.from_dict(json.loads(meta["config"]), source=path)
        self.precision = meta.get("precision", "fp32")
        if self.precision == "int8":
            _check_int8_device(path, self.device)
        self.export_thresh = self.config.runtime.score_thresh
        if self.export_thresh is None:
            self.export_thresh = self.config.model.roi_head.score_thresh
        self._apply(overrides or [])
        self.input_dtype = meta.get("input_dtype", "uint8")
        self.batch_size = json.loads(meta.get("batch_size", "null"))  # None: dynamic
        self.metadata = dict(meta)

    def _apply(self, overrides: list) -> None:
        for item in overrides:
            key = item.split("=", 1)[0].strip()
            if key.startswith("model.") or key.startswith("test.tta") or (key.startswith("runtime.") and key not in (
                    "runtime.score_thresh", "runtime.device", "runtime.precision", "runtime.threads")):
                raise ConfigError(f"{self.path}: {key} is fixed in an ONNX export (test-time augmentation, the "
                                  "model and its numerics are part of the graph); re-export from the checkpoint")
        apply_overrides(self.config, overrides)
        want = self.config.runtime.precision
        self.precision_reason = f"the file's ({self.precision})"
        if want not in ("auto", self.precision):
            fix = ("quantize the checkpoint: python tools/quantize.py CHECKPOINT --out model_int8" if want == "int8"
                   else "bf16 is a PyTorch path: run the checkpoint" if want == "bf16"
                   else "use the float32 export (tools/export.py)")
            raise ConfigError(f"{self.path}: runtime.precision={want} but this export is {self.precision}; {fix}")
        thresh = self.config.runtime.score_thresh
        # the lowest score the file returns: its own cut-off, or a stricter runtime.score_thresh
        self.min_score = thresh if thresh is not None and thresh > self.export_thresh else self.export_thresh
        if thresh is not None and thresh < self.export_thresh:
            self.warn_below_cutoff(thresh)

    def _prepare(self, image) -> np.ndarray:
        """HxWx3 uint8 RGB array or [3,H,W] tensor -> [3,H,W] array in the graph's input dtype."""
        if isinstance(image, np.ndarray):
            chw = image.transpose(2, 0, 1)
        else:  # a torch tensor [3,H,W], uint8 or float 0..1
            chw = image.detach().cpu().numpy()
            if chw.dtype != np.uint8 and self.input_dtype == "uint8":
                chw = np.clip(np.rint(chw * 255.0), 0, 255).astype(np.uint8)
        if self.input_dtype == "uint8":
            return np.ascontiguousarray(chw, dtype=np.uint8)
        return np.ascontiguousarray(chw, dtype=np.float32) / (255.0 if chw.dtype == np.uint8 else 1.0)

    def _forward(self, inputs: list, proposals: Optional[list] = None) -> list:
        if proposals is not None:
            raise ValueError(f"{self.path}: an ONNX export computes its own proposals")
        dets = self.run(np.stack(inputs))
        if self.min_score > self.export_thresh:
            dets = [{k: v[d["scores"] >= self.min_score] for k, v in d.items()} for d in dets]
        return dets

    def run(self, batch: np.ndarray) -> list:
        """[B,3,H,W] of one size -> B detection dicts (boxes, labels, scores as numpy)."""
        n, fixed = batch.shape[0], self.batch_size
        if fixed and n != fixed:  # a fixed-batch export: run chunks of `fixed`, the last one padded
            chunks = [batch[i:i + fixed] for i in range(0, n, fixed)]
            pad = fixed - chunks[-1].shape[0]
            chunks[-1] = np.concatenate([chunks[-1], np.repeat(chunks[-1][-1:], pad, axis=0)])
            return [d for c in chunks for d in self.run(c)][:n]
        boxes, labels, scores, index = self.session.run(None, {"images": batch})
        return [{"boxes": boxes[index == i].astype(np.float32), "labels": labels[index == i].astype(np.int64),
                 "scores": scores[index == i].astype(np.float32)} for i in range(n)]

    def close(self) -> None:
        self.session = None


OnnxDetector = OnnxPredictor  # the 0.1 name
