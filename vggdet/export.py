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

Why a second forward and not `torch.onnx.export(model)`: the PyTorch forward loops over images in
Python and turns sizes into Python numbers, which tracing bakes into constants (the failure behind
torchvision's one-size and first-image-only exports). This module re-expresses the eval path with the
same submodules and the same box maths (`BoxCoder`, anchors) but keeps sizes as tensors and handles the
batch with an image index. It uses the TorchScript exporter (`dynamo=False`): torchvision registers its
`nms` / `roi_pool` / `roi_align` for it, and the data-dependent sizes of NMS outputs trace without guards.
tests/test_export.py compares its detections with PyTorch's.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from vggdet.fileio import atomic_path
from vggdet.model.boxes import grid_anchors
from vggdet.model.detector import FasterRCNN

__all__ = ["ExportError", "DetectorGraph", "export_onnx", "export_model", "check_config", "MIN_OPSET",
           "DEFAULT_OPSET", "OUTPUTS"]

MIN_OPSET, DEFAULT_OPSET = 11, 17  # 11: Resize with sizes, NonMaxSuppression with inputs; 16: RoiAlign aligned
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


def _rank_in_group(group: Tensor, num_groups: Tensor) -> Tensor:
    """For a sequence of group ids, each element's position among the earlier elements of its group."""
    onehot = (group[:, None] == torch.arange(num_groups, device=group.device)[None]).to(torch.int64)
    return (onehot.cumsum(0) * onehot).sum(1) - 1


class DetectorGraph(nn.Module):
    """The eval path of a `FasterRCNN` with every size a tensor; see the module docstring."""

    def __init__(self, model: FasterRCNN, input_dtype: str = "uint8", opset: int = DEFAULT_OPSET):
        super().__init__()
        check_exportable("rpn" if model.rpn is not None else "external", model.roi_head.nms, model.roi_head.pool,
                         opset)
        self.transform, self.backbone, self.rpn, self.head = model.transform, model.backbone, model.rpn, model.roi_head
        self.input_dtype = input_dtype

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x, sizes, scale = self.preprocess(images)
        features = self.backbone(x)
        rois, roi_img = self.proposals(features, sizes, scale)
        scores, deltas = self.head.predict(features, torch.cat([roi_img[:, None].to(rois), rois], 1))
        boxes, labels, probs, img = self.postprocess(scores, deltas, rois, roi_img, sizes,
                                                     torch._shape_as_tensor(images)[0])
        return boxes / torch.cat([scale, scale]), labels, probs, img

    def preprocess(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> (padded batch, network size [2] int64 (h, w), scale [2] float32 (sx, sy))."""
        t = self.transform
        x = images.float() / 255.0 if self.input_dtype == "uint8" else images.float()
        x = (x - t.mean[None]) / t.std[None]
        if t.caffe_input:
            x = x.flip(1)
        hw = torch._shape_as_tensor(images)[2:].to(torch.float64)
        # The resize factor as in InputTransform.scale_for, in float64 like Python's floats, rounded half
        # to even like Python's round().
        # (minimum / maximum of the two, not ReduceMin / ReduceMax: OpenVINO mis-sizes the Resize after those)
        short, long = torch.minimum(hw[0], hw[1]), torch.maximum(hw[0], hw[1])
        s = torch.minimum(t.test_min_size / short, t.max_size / long)
        new = torch.round(hw * s).to(torch.int64)
        d = t.size_divisible
        padded = torch.div(new + (d - 1), d, rounding_mode="floor") * d
        x = _ResizePad.apply(x, new[0], new[1], padded[0], padded[1])
        scale = (new.to(torch.float64) / hw).flip(0).to(torch.float32)  # (sx, sy) = (nw / w, nh / h)
        return x, new, scale

    def proposals(self, features: Tensor, sizes: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """RPN.proposals with one image size: -> (RoIs [R,4] network pixels, their image index [R])."""
        rpn = self.rpn
        shape = torch._shape_as_tensor(features)
        n, fh, fw = shape[0], shape[2], shape[3]
        x = F.relu(rpn.conv(features))
        logits = rpn.cls_logits(x).permute(0, 2, 3, 1).reshape(n, -1)
        a = rpn.base.shape[0]
        deltas = rpn.bbox_pred(x).reshape(n, a, 4, fh, fw).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        anchors = grid_anchors(rpn.base, fh, fw, rpn.stride)
        k = torch.clamp(torch._shape_as_tensor(logits)[1], max=rpn.pre_nms_top_n[1])
        top, idx = logits.topk(k, dim=1)
        boxes = rpn.coder.decode(deltas.gather(1, idx[..., None].expand(-1, -1, 4)).reshape(-1, 4),
                                 anchors[idx.reshape(-1)])
        boxes = torch.minimum(boxes.clamp(min=0), sizes.flip(0).repeat(2).to(boxes))
        img = torch.arange(n)[:, None].expand(-1, k).reshape(-1)
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = (wh >= rpn.min_size * scale.mean()).all(1)
        boxes, top, img = boxes[keep], top.reshape(-1)[keep], img[keep]
        kept = _grouped_nms(boxes, top, img, sizes, rpn.nms_thresh)
        kept = kept[_rank_in_group(img[kept], n) < rpn.post_nms_top_n[1]]
        return boxes[kept], img[kept]

    def postprocess(self, scores: Tensor, deltas: Tensor, rois: Tensor, img: Tensor, sizes: Tensor,
                    n: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """RoIHead.postprocess with one image size; detections sorted by image, then descending score."""
        h = self.head
        k1 = h.num_classes + 1
        probs = F.softmax(scores.float(), dim=1)[:, 1:]
        boxes = h.coder.decode(deltas.float(), rois).reshape(-1, k1, 4)[:, 1:]
        boxes = torch.minimum(boxes.clamp(min=0), sizes.flip(0).repeat(2).to(boxes))
        if h.class_agnostic_nms:
            probs, best = probs.max(dim=1, keepdim=True)
            boxes = boxes.gather(1, best[..., None].expand(-1, -1, 4))
            labels = best + 1
        else:
            labels = torch.arange(1, k1)[None].expand_as(probs)
        img = img[:, None].expand_as(probs)
        keep = probs > h.score_thresh
        boxes, probs, labels, img = boxes[keep], probs[keep], labels[keep], img[keep]
        keep = (boxes[:, 2:] - boxes[:, :2] > 1e-2).all(1)
        boxes, probs, labels, img = boxes[keep], probs[keep], labels[keep], img[keep]
        groups = img if h.class_agnostic_nms else img * k1 + labels
        kept = _grouped_nms(boxes, probs, groups, sizes, h.nms_thresh)
        kept = kept[_rank_in_group(img[kept], n) < h.detections_per_img]
        # Group by image keeping the score order: sort on (image, position in the score order).
        pos = torch.arange(torch._shape_as_tensor(kept)[0])
        order = torch.argsort(img[kept] * (pos.shape[0] + 1) + pos)
        kept = kept[order]
        return boxes[kept], labels[kept], probs[kept], img[kept]


def _grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, sizes: Tensor, iou: float) -> Tensor:
    """batched_nms by shifting each group by (group * (largest side + 1)): boxes are clipped to the image,
    so groups never overlap. torchvision's own trick takes boxes.max(), which fails on empty inputs."""
    offset = groups.to(boxes) * (sizes.max() + 1).to(boxes)
    return nms(boxes + offset[:, None], scores, iou)


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

    from vggdet.checkpoint import load_detector

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

    from vggdet import __version__

    _check_input_dtype(input_dtype)
    if svd is not None:
        _apply_svd(model, cfg, svd)
    model.winograd = False  # plain convs: Winograd is a PyTorch-side conversion (vggdet/model/winograd.py)
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
                "config": json.dumps(cfg.to_dict()), "input_dtype": input_dtype, "opset": str(opset),
                "svd": json.dumps(list(svd) if svd else None), "fp16_weights": json.dumps(bool(fp16)),
                "batch_size": json.dumps(batch_size), "source": source}
        onnx.helper.set_model_props(proto, meta)
        onnx.save(proto, tmp)
    return {"out": out, "bytes": os.path.getsize(out), "opset": opset, "classes": len(classes)}


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
    from vggdet.svd import SVDError, compress_fc

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
