"""Where and how a model runs, shared by training and inference: the device, the one autocast rule, and
model outputs as numpy. Settings come from `cfg.runtime` (vggdet/config.py)."""
from __future__ import annotations

import contextlib
from typing import Optional, Union

import torch

from vggdet.config import RuntimeConfig

__all__ = ["resolve_device", "amp_dtype", "autocast", "detections_to_numpy"]


def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """None or "auto" -> cuda when available, else cpu; "cuda" on a machine without CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device}: not a device (auto, cpu, cuda or cuda:N)") from None


def amp_dtype(runtime: RuntimeConfig, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for fp32. One rule for training, testing and inference:
    `runtime.amp` on -> `runtime.amp_dtype`, or by default float16 on CUDA and bfloat16 on the CPU
    (the CPU has no fast fp16 kernels). Other devices run fp32."""
    if not runtime.amp or device.type not in ("cuda", "cpu"):
        return None
    if runtime.amp_dtype is not None:
        return getattr(torch, runtime.amp_dtype)
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """torch.autocast on `device` in `dtype`; a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def detections_to_numpy(det: dict) -> dict:
    """One image's model output (tensors on any device, any float dtype) -> float32 / int64 numpy arrays."""
    return {"boxes": det["boxes"].float().cpu().numpy(), "labels": det["labels"].cpu().numpy(),
            "scores": det["scores"].float().cpu().numpy()}
