"""mAP of a checkpoint on its config's test split.

    python tools/test_det.py CONFIG CHECKPOINT [--out DIR] [--device D] [--amp] [--set k=v ...]
    python tools/test_det.py CHECKPOINT            # uses the config embedded in the checkpoint
    torchrun --nproc_per_node N tools/test_det.py CHECKPOINT       # test images sharded across ranks
    python tools/test_det.py CHECKPOINT --ray [local|ADDRESS] [--workers N]   # predictions on Ray Data

Writes the VOC devkit results files (and COCO JSON for COCO data) and metrics.json into --out (default
<checkpoint folder>/test) and prints the per-class table; --report also writes the error analysis of
tools/analyze_det.py into <out>/report. Also installed as `vggdet-test`.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional

from vggdet.cli import (
    add_ray_arguments,
    add_runtime_arguments,
    add_set_argument,
    check_ray_arguments,
    command,
    print_evaluation,
    prog,
    runtime_overrides,
    split_set_items,
)


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog("test_det.py"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="[CONFIG] CHECKPOINT")
    p.add_argument("--out", help="results folder (default: <checkpoint folder>/test)")
    p.add_argument("--report", action="store_true",
                   help="also write the error analysis (TIDE, confusion matrix, report.html) into <out>/report")
    add_runtime_arguments(p)
    add_ray_arguments(p)
    add_set_argument(p)
    args = p.parse_args(split_set_items(argv))
    if len(args.paths) > 2:
        p.error("expected [CONFIG] CHECKPOINT")
    check_ray_arguments(p, args)
    args.config, args.checkpoint = args.paths if len(args.paths) == 2 else (None, args.paths[0])
    return args


@command
def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "test")
    from vggdet.fileio import ensure_writable

    ensure_writable(out)
    return print_evaluation(args.checkpoint, args.config, runtime_overrides(args), out, args.report,
                            args if args.ray is not None else None)
