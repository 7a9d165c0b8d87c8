"""int8 post-training static quantization of a checkpoint (vggdet/quantize.py, ONNX Runtime's quantizer).

    python tools/quantize.py CHECKPOINT --out model_int8 [--calib 64 | --calib-images DIR] [--set k=v ...]

Writes model_int8.onnx: int8 backbone convs, RPN conv and fc6/fc7 (per-channel weights), calibrated on N
images of the config's training split (default 64) or on the images of DIR. It runs like any export:
`Detector.from_checkpoint("model_int8.onnx")`, tools/infer.py, tools/test_det.py. SVD checkpoints
(tools/compress_svd.py) quantize too. Also installed as `vggdet-quantize`.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional

from vggdet.cli import add_set_argument, command, prog, split_set_items


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog("quantize.py"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="output path (.onnx is added when missing)")
    p.add_argument("--calib", type=int, default=64, help="calibration images from the training split (default 64)")
    p.add_argument("--calib-images", default=None, metavar="DIR",
                   help="calibrate on the images of this folder instead (at most --calib of them)")
    p.add_argument("--reduce-range", choices=["auto", "on", "off"], default="auto",
                   help="7-bit weights; auto = on for CPUs without VNNI (their int8 kernels could overflow)")
    add_set_argument(p)
    return p.parse_args(split_set_items(argv))


@command
def main(argv: Optional[list] = None) -> int:
    a = parse_args(argv)
    out = a.out if a.out.lower().endswith(".onnx") else a.out + ".onnx"
    from vggdet.deploy.quantize import quantize_checkpoint
    from vggdet.fileio import ensure_writable

    ensure_writable(os.path.dirname(os.path.abspath(out)))
    reduce_range = {"auto": None, "on": True, "off": False}[a.reduce_range]
    info = quantize_checkpoint(a.checkpoint, out, calib=a.calib, calib_images=a.calib_images, overrides=a.set,
                               reduce_range=reduce_range)
    print(f"wrote {out}: {info['bytes'] / 2**20:.1f} MiB, {info['nodes']} int8 layers, calibrated on "
          f"{info['calibration_images']} images, reduce_range={info['reduce_range']}")
    return 0
