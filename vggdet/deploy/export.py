"""ONNX export: the whole detector, image in, detections out, in one graph with dynamic batch, height, width.

    export_onnx("best.pth", "model.onnx", opset=17, svd=(1024, 256), fp16=False, batch_size=None)

Graph input `images` [B,3,H,W] RGB (uint8 0..255, or float32 0..1 with `input_dtype="float32"`), B, H, W
dynamic. Outputs, sorted by image and then by descending score:

    boxes [D,4] float32 xyxy in input pixels   labels [D] int64 in 1..K   scores [D] float32
    image_index [D] int64 (which image of the batch each detection belongs to)

Inside: normalise, resize (shorter side -> test_min_size, longer <= max_size, Resize linear/half_pixel
== F.interpolate bilinear), zero-pad to a multiple of 16, VGG convs, RPN (top-k, decode, clip, NMS as
`NonMaxSuppression`, per-image top-k), RoIPool as `MaxRoiPool` (RoIAlign as opset-16 `RoiAlign`), fc6/fc7,
class scores, per-class boxes, score threshold, per-class NMS, per-image top `detections_per_img`.
Every image of a batch has one size, so the batch changes nothing in the detections.

Why a graph module beside `FasterRCNN.forward` rather than `torch.onnx.export(model)`: the eager forward
loops over images in Python and keeps sizes as Python numbers, which tracing bakes into constants (the
failure behind torchvision's one-size and first-image-only exports). `DetectorGraph` only composes: it
runs the model's own submodules and the same functions as the eager model for every stage's arithmetic
(`resized_size`, `RPN.head`, `select_proposals`, `RoIHead.predict` / `detect`, with `BoxCoder`, `clip_boxes`,
`grouped_nms` and `rank_in_group` inside them), whose tracing branches keep sizes as graph values; what
is left here is the input resize as one ONNX op and the export itself. It uses the TorchScript exporter
(`dynamo=False`): torchvision registers its `nms` / `roi_pool` / `roi_align` for it, and the
data-dependent sizes of NMS outputs trace without guards. tests/test_export.py compares its detections
with PyTorch's.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vggdet.deploy import DEFAULT_OPSET, MIN_OPSET
from vggdet.fileio import atomic_path
from vggdet.model import cpu_kernels
from vggdet.model.detector import FasterRCNN
from vggdet.model.rpn import select_proposals
from vggdet.model.transform import resized_size

__all__ = ["ExportError", "DetectorGraph", "export_onnx", "export_model", "check_config", "MIN_OPSET",
           "DEFAULT_OPSET", "OUTPUTS"]

OUTPUTS = ("boxes", "labels", "scores", "image_index")


class ExportError(ValueError):
    """A model, option or environment that cannot be exported; the message names the option."""


class _ResizePad(torch.autograd.Function):
    """Bilinear resize to (nh, nw), then zero-pad bottom/right to (hp, wp), with sizes given as tensors.

    F.interpolate and F.pad take Python ints, which tracing would freeze to the example's size; this
    function emits ONNX Resize + Pad with the sizes as graph values instead.
    """

    @staticmethod
    def forward(ctx, x: Tensor, nh: Tensor, nw: Tensor, hp: Tensor, wp: Tensor) -> Tensor:
        nh_, nw_, hp_, wp_ = int(nh), int(nw), int(hp), int(wp)
        x = F.interpolate(x, size=(nh_, nw_), mode="bilinear", align_corners=False)
        return F.pad(x, (0, wp_ - nw_, 0, hp_ - nh_))

    @staticmethod
    def symbolic(g, x, nh, nw, hp, wp):
        def as1d(v):
            return g.op("Reshape", v, g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64)))

        lead = g.op("Slice", g.op("Shape", x), g.op("Constant", value_t=torch.tensor([0])),
                    g.op("Constant", value_t=torch.tensor([2])))
        sizes = g.op("Concat", lead, as1d(nh), as1d(nw), axis_i=0)
        empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        y = g.op("Resize", x, empty, empty, sizes, mode_s="linear", coordinate_transformation_mode_s="half_pixel")
        zeros = g.op("Constant", value_t=torch.zeros(6, dtype=torch.int64))
        pads = g.op("Concat", zeros, as1d(g.op("Sub", hp, nh)), as1d(g.op("Sub", wp, nw)), axis_i=0)
        return g.op("Pad", y, pads, mode_s="constant")


class DetectorGraph(nn.Module):
    """The eval path of a `FasterRCNN` over one same-size batch tensor; see the module docstring."""

    def __init__(self, model: FasterRCNN, input_dtype: str = "uint8", opset: int = DEFAULT_OPSET):
        super().__init__()
        check_exportable("rpn" if model.rpn is not None else "external", model.roi_head.nms, model.roi_head.pool,
                         opset)
        self.transform, self.backbone, self.rpn, self.head = model.transform, model.backbone, model.rpn, model.roi_head
        self.input_dtype = input_dtype

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x, size, scale = self.preprocess(images)
        n = torch._shape_as_tensor(images)[0]
        sizes = size[None].expand(n, 2)  # every image of the batch has the same size
        features = self.backbone(x)
        rpn = self.rpn
        logits, deltas = rpn.head(features)
        min_sizes = (scale.mean().to(torch.float32) * rpn.min_size).expand(n)  # as the eager RPN: float64 mean
        rois, img = select_proposals(logits, deltas, rpn.anchors_for(features), sizes, min_sizes, rpn.coder,
                                     rpn.pre_nms_top_n[1], rpn.post_nms_top_n[1], rpn.nms_thresh)
        scores, deltas = self.head.predict(features, torch.cat([img[:, None].to(rois), rois], 1))
        boxes, labels, probs, img = self.head.detect(scores, deltas, rois, img, sizes, n)
        scale = scale.to(torch.float32)
        return boxes / torch.cat([scale, scale]), labels, probs, img

    def preprocess(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> (padded batch, network size [2] int64 (h, w), scale [2] float64 (sx, sy))."""
        t = self.transform
        x = t.normalize(images)
        hw = torch._shape_as_tensor(images)[2:].to(torch.float64)
        new = resized_size(hw, t.test_min_size, t.max_size)  # the eager model's rule (vggdet/model/transform.py)
        d = t.size_divisible
        padded = torch.div(new + (d - 1), d, rounding_mode="floor") * d
        x = _ResizePad.apply(x, new[0], new[1], padded[0], padded[1])
        scale = (new.to(torch.float64) / hw).flip(0)  # (sx, sy) = (nw / w, nh / h)
        return x, new, scale


def check_exportable(proposals: str, nms_method: str, pool: str, opset: int) -> None:
    """One-line errors for the configurations and opsets the graph does not cover."""
    if proposals != "rpn":
        raise ExportError(f"model.proposals={proposals!r} cannot be exported: the graph computes its own "
                          "proposals; export a model trained with model.proposals='rpn'")
    if nms_method != "nms":
        raise ExportError(f"model.roi_head.nms={nms_method!r} cannot be exported: Soft-NMS has no ONNX "
                          "operator; export with --set model.roi_head.nms=nms")
    if not MIN_OPSET <= opset <= _max_opset():
        raise ExportError(f"--opset {opset}: this exporter writes opsets {MIN_OPSET}..{_max_opset()}")
    if pool == "align" and opset < 16:
        raise ExportError(f"--opset {opset}: model.roi_head.pool='align' needs opset >= 16 (RoiAlign with "
                          "half-pixel alignment); use --opset 16 or later")


def export_onnx(checkpoint: str, out: str, *, opset: int = DEFAULT_OPSET, svd: Optional[tuple] = None,
                fp16: bool = False, batch_size: Optional[int] = None, input_dtype: str = "uint8",
                config: Optional[str] = None, overrides: Optional[list] = None) -> dict:
    """Export checkpoint `path` to ONNX file `out` (written atomically); returns a summary dict.

    svd: (rank_fc6, rank_fc7) truncated SVD of the fc layers first (either may be None); fp16: store the
    large weights as float16 (half the file) with a Cast to float32 in front of each, so every runtime
    computes in float32; batch_size: a fixed batch, or None for a dynamic one.
    """
    import onnx  # noqa: F401 (fail before the weights load when the extra is missing)

    from vggdet.training.checkpoint import load_detector

    _check_input_dtype(input_dtype)
    model, cfg, classes = load_detector(checkpoint, config, overrides, check=lambda c: check_config(c, opset))
    return export_model(model, cfg, classes, out, opset=opset, svd=svd, fp16=fp16, batch_size=batch_size,
                        input_dtype=input_dtype, source=os.path.basename(checkpoint))


def check_config(cfg, opset: int = DEFAULT_OPSET) -> None:
    """`check_exportable` on a config: to run before the weights load, so a wrong option fails by name."""
    m = cfg.model
    check_exportable(m.proposals, m.roi_head.nms, m.roi_head.pool, opset)


def export_model(model: FasterRCNN, cfg, classes: list, out: str, *, opset: int = DEFAULT_OPSET,
                 svd: Optional[tuple] = None, fp16: bool = False, batch_size: Optional[int] = None,
                 input_dtype: str = "uint8", source: str = "") -> dict:
    """`export_onnx` for a loaded model (which this converts in place: SVD, plain convs, eval mode)."""
    import onnx

    from vggdet import __version__  # vggdet/__init__ imports only the config

    _check_input_dtype(input_dtype)
    if svd is not None:
        _apply_svd(model, cfg, svd)
    cpu_kernels.revert(model)  # plain modules, should a predictor have converted this model (a PyTorch-side speed-up)
    graph = DetectorGraph(model.eval(), input_dtype, opset).eval()
    example = _example_input(batch_size or 2, input_dtype)
    axes = {"images": ({} if batch_size else {0: "batch"}) | {2: "height", 3: "width"},
            **{k: {0: "detections"} for k in OUTPUTS}}
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the sizes we deliberately keep dynamic
        torch.onnx.export(graph, (example,), tmp, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=list(OUTPUTS), dynamic_axes=axes, do_constant_folding=True)
        proto = onnx.load(tmp)
        _undo_initializer_dedup(proto)
        if fp16:
            _weights_to_fp16(proto)
        meta = {"vggdet_format": "1", "vggdet_version": __version__, "classes": json.dumps(list(classes)),
                "score_thresh": json.dumps(model.roi_head.score_thresh),
                "config": json.dumps(cfg.to_dict()), "input_dtype": input_dtype, "opset": str(opset),
                "svd": json.dumps(list(svd) if svd else None), "fp16_weights": json.dumps(bool(fp16)),
                "batch_size": json.dumps(batch_size), "source": source}
        onnx.helper.set_model_props(proto, meta)
        onnx.save(proto, tmp)
    return {"out": out, "bytes": os.path.getsize(out), "opset": opset, "classes": len(classes),
            "score_thresh": model.roi_head.score_thresh}


def _check_input_dtype(input_dtype: str) -> None:
    if input_dtype not in ("uint8", "float32"):
        raise ExportError(f"input dtype must be uint8 or float32, got {input_dtype!r}")


def _max_opset() -> int:
    from torch.onnx import _constants

    return getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)


def _example_input(batch: int, input_dtype: str) -> Tensor:
    """A non-square example (so no size is special) for tracing; the values do not matter."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, 300, 400), generator=g, dtype=torch.uint8)
    return x if input_dtype == "uint8" else x.float() / 255.0


def _apply_svd(model: FasterRCNN, cfg, ranks: tuple) -> None:
    from vggdet.deploy.svd import SVDError, compress_fc

    for name, rank in zip(("fc6", "fc7"), ranks):
        if rank is None:
            continue
        layer = getattr(model.roi_head, name)
        if not isinstance(layer, nn.Linear):
            raise ExportError(f"--svd: {name} is already factored (model.roi_head.{name}_rank is set); "
                              "export without --svd")
        try:
            setattr(model.roi_head, name, compress_fc(layer, rank))
        except SVDError as e:
            raise ExportError(f"--svd: {e}") from None
        setattr(cfg.model.roi_head, f"{name}_rank", rank)


def _undo_initializer_dedup(proto) -> int:
    """The exporter stores equal weights (e.g. the zero biases of a fresh model) once and feeds the others
    through Identity nodes; quantizers expect each conv's weight and bias as initializers, so give each
    its own copy again. Returns the number of Identity nodes replaced."""
    inits = {i.name: i for i in proto.graph.initializer}
    dup = [n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in inits]
    for node in dup:
        copy = proto.graph.initializer.add()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        proto.graph.node.remove(node)
    return len(dup)


def _weights_to_fp16(proto, min_elements: int = 1024) -> int:
    """Store float32 initializers of >= min_elements as float16, each behind a Cast back to float32.

    Halves the file; runtimes fold the casts when they load the model, so the arithmetic (and the
    detections, up to the weights' rounding) stay float32 on every device. Returns the number converted.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    casts, n = [], 0
    for init in proto.graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        name = init.name
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), name + "_fp16")
        init.CopyFrom(half)
        casts.append(helper.make_node("Cast", [name + "_fp16"], [name], to=TensorProto.FLOAT, name=name + "_cast"))
        n += 1
    for node in reversed(casts):
        proto.graph.node.insert(0, node)
    return n
