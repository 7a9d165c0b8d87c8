"""Where and how a model runs, shared by training and inference: the device, the one autocast rule, and the
CPU's facts (model, feature flags). Settings come from `cfg.runtime` (vggdet/config.py)."""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional, Union

import torch

from vggdet.config import RuntimeConfig

__all__ = ["resolve_device", "amp_dtype", "inference_precision", "native_bf16", "autocast",
           "precision_name", "cpu_flags", "cpu_model"]


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


def inference_precision(cfg, device: torch.device) -> tuple:
    """(autocast dtype or None, why) for testing and inference by `runtime.precision`; one rule:
    explicit bf16 > `runtime.amp` > auto (bf16 on a CPU with native bf16, else fp32) > fp32. A one-line
    error when the device cannot run it (bf16 without native support) or the model is not the right kind
    (int8). Training never calls this: `amp_dtype` is its rule."""
    precision = cfg.runtime.precision
    if precision == "int8":
        raise ValueError("runtime.precision=int8 needs a quantized model: python tools/quantize.py CHECKPOINT "
                         "--out model_int8, then test or run model_int8.onnx")
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"runtime.precision=bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp32")
        if device.type == "cpu" and not native_bf16():
            raise ValueError(f"runtime.precision=bf16: this CPU ({cpu_model()}) has no native bf16 (avx512_bf16 "
                             "or AMX), so bf16 would be emulated and slow; use runtime.precision=fp32 (or int8)")
        return torch.bfloat16, "runtime.precision=bf16"
    if cfg.runtime.amp:
        dtype = amp_dtype(cfg.runtime, device)
        return dtype, f"runtime.amp (autocast {precision_name(dtype)})"
    if precision == "auto":
        pinned = os.environ.get("VGGDET_PRECISION", "").strip().lower()
        if pinned in ("fp32", "bf16"):
            return (torch.bfloat16 if pinned == "bf16" else None), f"auto, pinned by VGGDET_PRECISION={pinned}"
        if device.type == "cpu" and native_bf16():
            return torch.bfloat16, f"auto: this CPU ({cpu_model()}) has native bf16"
        return None, "auto: " + ("no native bf16 on this CPU" if device.type == "cpu" else f"{device.type} runs fp32")
    return None, "runtime.precision=fp32"


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), as oneDNN's bf16 kernels need."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """An autocast dtype as the precision's name: "fp32" (None), "bf16" or "fp16"."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def cpu_flags() -> set:
    """The x86 feature flags of this CPU from /proc/cpuinfo (empty where there is none)."""
    return set(_cpuinfo_field("flags").split())


def cpu_model() -> str:
    """The CPU model, e.g. "AMD EPYC" (/proc/cpuinfo's "model name"; platform.processor() elsewhere)."""
    import platform

    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


@functools.lru_cache(maxsize=None)
def _cpuinfo_field(name: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """torch.autocast on `device` in `dtype`; a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
