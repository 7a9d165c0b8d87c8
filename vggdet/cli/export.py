"""Export a checkpoint to ONNX: the whole detector, image in, detections out (vggdet/deploy/export.py).

    python tools/export.py CHECKPOINT --out model.onnx [--opset 17] [--svd 1024,256] [--fp16]
        [--batch-size N|dynamic] [--input-dtype uint8|float32] [--score-thr S] [--set k=v ...]

Input `images` [B,3,H,W] RGB with dynamic height and width (and batch, unless --batch-size N); outputs
boxes [D,4] (input pixels), labels [D], scores [D], image_index [D]. The score cut-off is part of the
graph: --score-thr sets it (default: the checkpoint's); a lower threshold asked of the file later cannot
bring back what it dropped. Run the file with `load_predictor("model.onnx")`, tools/infer.py or
tools/test_det.py. Also installed as `vggdet-export`.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional

from vggdet.cli import add_set_argument, command, prog, split_set_items


def _ranks(text: str) -> tuple:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected R6,R7 (two integers, 0 keeps that layer), got {text!r}")
    return tuple(int(p) or None for p in parts)


def _batch(text: str) -> Optional[int]:
    if text == "dynamic":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'dynamic', got {text!r}")
    return int(text)


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    from vggdet.deploy import DEFAULT_OPSET  # not vggdet.deploy.export: --help must not wait for torch

    p = argparse.ArgumentParser(prog=prog("export.py"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--svd", type=_ranks, default=None, metavar="R6,R7",
                   help="truncated SVD of fc6/fc7 to these ranks first (Fast R-CNN: 1024,256)")
    p.add_argument("--fp16", action="store_true", help="store the weights as float16 (half the file); "
                   "the runtime casts them back and computes in float32")
    p.add_argument("--batch-size", type=_batch, default=None, metavar="N|dynamic",
                   help="a fixed batch size, or dynamic (default)")
    p.add_argument("--input-dtype", choices=["uint8", "float32"], default="uint8",
                   help="uint8 0..255 (default) or float32 0..1 RGB input")
    p.add_argument("--score-thr", type=float, default=None, metavar="S",
                   help="the graph's score cut-off (default: the checkpoint's runtime.score_thresh, else "
                        "model.roi_head.score_thresh); recorded in the file")
    add_set_argument(p)
    a = p.parse_args(split_set_items(argv))
    if a.score_thr is not None and not 0.0 <= a.score_thr <= 1.0:
        p.error(f"--score-thr must be in [0, 1], got {a.score_thr}")
    return a


@command
def main(argv: Optional[list] = None) -> int:
    a = parse_args(argv)
    if not a.out.lower().endswith(".onnx"):
        raise ValueError(f"--out {a.out}: the file name must end in .onnx")
    from vggdet.deploy.export import export_onnx
    from vggdet.fileio import ensure_writable

    ensure_writable(os.path.dirname(os.path.abspath(a.out)))
    info = export_onnx(a.checkpoint, a.out, opset=a.opset, svd=a.svd, fp16=a.fp16, batch_size=a.batch_size,
                       input_dtype=a.input_dtype,
                       overrides=([f"runtime.score_thresh={a.score_thr}"] if a.score_thr is not None else []) + a.set)
    print(f"wrote {a.out}: {info['bytes'] / 2**20:.1f} MiB, opset {info['opset']}, {info['classes']} classes, "
          f"score cut-off {info['score_thresh']:g}")
    return 0
