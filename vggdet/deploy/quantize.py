"""int8 post-training static quantization of an exported detector, with ONNX Runtime's quantizer.

    quantize_checkpoint("best.pth", "model_int8.onnx", calib=64)            # the config's training split
    quantize_checkpoint("best.pth", "model_int8.onnx", calib_images="photos/")

The checkpoint is exported to ONNX (vggdet/export.py), then `onnxruntime.quantization.quantize_static`
inserts QuantizeLinear / DequantizeLinear pairs (QDQ) around the backbone convs (with their ReLUs and
max-pools), the RPN conv and fc6 / fc7 (their SVD factors too): int8 weights per output channel (symmetric), uint8 activations per tensor
with ranges calibrated (MinMax) on real images. ONNX Runtime fuses each QDQ conv / matmul into an int8
kernel; the RPN's 1x1 heads, the class / box layers, RoI pooling, NMS and the box maths stay float32
(small, and where int8 rounding would move boxes). The result is an ordinary .onnx export with
`precision: int8` in its metadata, so `Detector.from_checkpoint`, tools/infer.py and tools/test_det.py
run it like any other.

Why this toolchain: measured against the alternatives in docs/deploy.md#int8; it reuses the export the
package already ships, runs in the same onnxruntime, and needs no compiler at load time.
`reduce_range` (7-bit weights) avoids the u8*s8 overflow of AVX2 / AVX-512 kernels without VNNI
(vpmaddubsw saturates its 16-bit pair sums); it is on when this CPU has no VNNI.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import tempfile
from typing import Iterator, Optional

import numpy as np

from vggdet.deploy.export import check_config, export_model
from vggdet.runtime import cpu_flags

__all__ = ["QuantizeError", "quantize_checkpoint", "quantize_onnx", "calibration_paths", "has_vnni"]


class QuantizeError(ValueError):
    """No calibration data, or a model / option that cannot be quantized; the message says what to do."""


def has_vnni(flags: Optional[set] = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def calibration_paths(cfg, n: int, folder: Optional[str] = None, seed: int = 0) -> list:
    """N image paths: a seeded sample of the config's training split, or every image of `folder` (<= n)."""
    if folder is not None:
        from vggdet.inference.images import collect_inputs

        images, _, _ = collect_inputs([folder])
        if not images:
            raise QuantizeError(f"--calib-images {folder}: no images there (jpg, jpeg, png, bmp, webp)")
        return images[:n]
    from vggdet.data import build_dataset

    try:
        ds = build_dataset(cfg, "train")
    except (OSError, ValueError) as e:
        raise QuantizeError(f"no calibration images: the training split cannot be read ({e}); point "
                            "data.root at it with --set, or pass --calib-images DIR") from None
    parts = getattr(ds, "datasets", [ds])
    paths = [p for part in parts for p in part.image_paths]
    if not paths:
        raise QuantizeError("no calibration images: the training split is empty; pass --calib-images DIR")
    return random.Random(seed).sample(paths, min(n, len(paths)))


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: one {"images": [1,3,H,W]} per call, None at the end."""

    def __init__(self, paths: list, input_dtype: str):
        self.paths, self.input_dtype = paths, input_dtype
        self._it: Iterator = iter(self._batches())

    def _batches(self) -> Iterator[dict]:
        from tqdm import tqdm

        from vggdet.data.image_io import read_image

        for p in tqdm(self.paths, desc="calibrate", unit="img"):
            x = read_image(p).transpose(2, 0, 1)[None]
            yield {"images": np.ascontiguousarray(x if self.input_dtype == "uint8" else x.astype(np.float32) / 255)}

    def get_next(self) -> Optional[dict]:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches())


def _nodes_to_quantize(model) -> list:
    """Backbone convs with their ReLUs and max-pools (so activations stay int8 from conv1_1 to conv5_3),
    the RPN 3x3 conv, and fc6 / fc7 (Gemm, or MatMul for SVD factors), by node name."""
    out = []
    for node in model.graph.node:
        if node.op_type == "Conv" and not node.name.startswith(("/cls_logits", "/bbox_pred")):
            out.append(node.name)
        elif node.op_type in ("Relu", "MaxPool") and node.name.startswith("/backbone"):
            out.append(node.name)
        elif node.op_type in ("Gemm", "MatMul") and node.name.startswith(("/fc6", "/fc7")):
            out.append(node.name)
    return out


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs advice through the root logger ("consider pre-processing"); the shape
    inference it suggests does not apply to a graph whose sizes are all dynamic."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_onnx(fp32: str, out: str, paths: list, reduce_range: Optional[bool] = None) -> dict:
    """QDQ int8 copy of the float32 export `fp32` at `out`, calibrated on `paths`; returns a summary."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from vggdet.fileio import atomic_path

    model = onnx.load(fp32)
    meta = {p.key: p.value for p in model.metadata_props}
    nodes = _nodes_to_quantize(model)
    n_layers = sum(1 for n in model.graph.node if n.name in nodes and n.op_type in ("Conv", "Gemm", "MatMul"))
    reduce_range = not has_vnni() if reduce_range is None else reduce_range
    with atomic_path(out) as tmp, _quiet_root_logger():
        quantize_static(fp32, tmp, _Reader(paths, meta.get("input_dtype", "uint8")), quant_format=QuantFormat.QDQ,
                        nodes_to_quantize=nodes, per_channel=True, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        q = onnx.load(tmp)
        cfg = json.loads(meta["config"])
        cfg["runtime"]["precision"] = "int8"
        meta.update(precision="int8", config=json.dumps(cfg), quantized_nodes=str(len(nodes)), calibration_images=str(len(paths)),
                    reduce_range=str(reduce_range).lower())
        onnx.helper.set_model_props(q, meta)
        onnx.save(q, tmp)
    return {"out": out, "bytes": os.path.getsize(out), "nodes": n_layers, "calibration_images": len(paths),
            "reduce_range": reduce_range}


def quantize_checkpoint(checkpoint: str, out: str, *, calib: int = 64, calib_images: Optional[str] = None,
                        overrides: Optional[list] = None, reduce_range: Optional[bool] = None) -> dict:
    """Checkpoint (or SVD checkpoint) -> int8 ONNX at `out`, calibrated on `calib` images."""
    from vggdet.training.checkpoint import load_detector

    if calib < 1:
        raise QuantizeError(f"--calib {calib}: need at least one calibration image")
    if checkpoint.lower().endswith(".onnx"):
        raise QuantizeError(f"{checkpoint}: quantize the checkpoint (.pth), not an export")
    paths: list = []

    def check(cfg) -> None:  # before the weights load: a bad option or missing calibration data fails at once
        check_config(cfg)
        paths.extend(calibration_paths(cfg, calib, calib_images, cfg.train.seed))

    model, cfg, classes = load_detector(checkpoint, None, overrides, check=check)
    with tempfile.TemporaryDirectory(prefix="vggdet_quant_") as tmp:
        fp32 = os.path.join(tmp, "fp32.onnx")
        export_model(model, cfg, classes, fp32, source=os.path.basename(checkpoint))
        return quantize_onnx(fp32, out, paths, reduce_range)
