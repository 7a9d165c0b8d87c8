"""Train a detector and report mAP.

    python tools/train_det.py CONFIG [--work-dir DIR] [--resume [CKPT|auto]] [--device D] [--amp] [--set k=v ...]
    torchrun --nproc_per_node N tools/train_det.py CONFIG ...      # multi-GPU / multi-node (DDP)

Also installed as `vggdet-train`.
"""
from __future__ import annotations

import argparse
import os
import warnings
from typing import Optional

from vggdet.cli import (
    add_runtime_arguments,
    add_set_argument,
    command,
    print_evaluation,
    prog,
    runtime_overrides,
    split_set_items,
)


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog("train_det.py"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="config file, e.g. configs/voc_vgg16.py")
    p.add_argument("--work-dir", help="output folder (default work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", const="auto", help="checkpoint to continue from, or 'auto' (latest.pth)")
    add_runtime_arguments(p)
    add_set_argument(p)
    p.add_argument("--eval-only", metavar="CKPT", help=argparse.SUPPRESS)  # deprecated: tools/test_det.py
    return p.parse_args(split_set_items(argv))


@command
def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    from vggdet.config import load_config
    from vggdet.fileio import ensure_writable

    overrides = runtime_overrides(args)
    cfg = load_config(args.config, overrides)
    work_dir = args.work_dir or os.path.join("work_dirs", cfg.name)
    ensure_writable(work_dir, "--work-dir")
    if args.eval_only:
        return _eval_only(args, overrides, work_dir)
    from vggdet.training.trainer import train

    metrics = train(cfg, work_dir, resume=args.resume)
    if metrics is not None:
        print(f"final {metrics['metric']} mAP: {100 * metrics['mAP']:.2f}  (work dir: {work_dir})")
    return 0


def _eval_only(args: argparse.Namespace, overrides: list, work_dir: str) -> int:
    """The old `--eval-only CKPT`: the same as tools/test_det.py CONFIG CKPT --out WORK_DIR/eval."""
    warnings.warn("--eval-only is deprecated and will be removed; use "
                  f"tools/test_det.py {args.config} {args.eval_only}", FutureWarning, stacklevel=2)
    return print_evaluation(args.eval_only, args.config, overrides, os.path.join(work_dir, "eval"))
