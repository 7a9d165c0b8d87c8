"""Evaluate a checkpoint on the config's test split:

    python tools/test_det.py CONFIG CHECKPOINT [--out DIR] [--device auto] [--set k=v ...]
    python tools/test_det.py CHECKPOINT            # uses the config embedded in the checkpoint

Writes the VOC devkit results files (and COCO JSON for COCO data) and metrics.json into --out, prints the
per-class table. Under torchrun the test images are sharded across ranks and gathered on rank 0.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vggdet.checkpoint import CheckpointError  # noqa: E402
from vggdet.config import ConfigError  # noqa: E402
from vggdet.data import DataError  # noqa: E402
from vggdet.evaluation import EvalError  # noqa: E402
from vggdet.predict import test_checkpoint  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="mAP of a checkpoint on the config's test split.")
    p.add_argument("paths", nargs="+", metavar="[CONFIG] CHECKPOINT")
    p.add_argument("--out", help="results folder (default: <checkpoint folder>/test)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true", help="autocast: train.amp_dtype on CUDA, bf16 on the CPU")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if len(args.paths) > 2:
        p.error("expected [CONFIG] CHECKPOINT")
    config, ckpt = (args.paths if len(args.paths) == 2 else (None, args.paths[0]))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(ckpt)), "test")
    try:
        metrics = test_checkpoint(ckpt, config, out_dir=out, device=args.device, amp=args.amp, overrides=args.set)
    except (ConfigError, DataError, EvalError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if metrics is not None:
        print(f"results and metrics.json written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
