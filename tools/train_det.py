"""Train a detector: python tools/train_det.py CONFIG [--work-dir DIR] [--resume [CKPT|auto]] [--set k=v ...]

Multi-GPU / multi-node: torchrun --nproc_per_node N tools/train_det.py CONFIG ...
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vggdet.checkpoint import CheckpointError  # noqa: E402
from vggdet.config import ConfigError, load_config  # noqa: E402
from vggdet.data import DataError  # noqa: E402
from vggdet.engine import Interrupted, TrainingError, train  # noqa: E402
from vggdet.evaluation import EvalError  # noqa: E402
from vggdet.model.backbone import WeightsError  # noqa: E402
from vggdet.predict import test_checkpoint  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train a VGG16 Fast/Faster R-CNN and report mAP.")
    p.add_argument("config", help="config file, e.g. configs/voc_vgg16.py")
    p.add_argument("--work-dir", help="output folder (default work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", const="auto", help="checkpoint to continue from, or 'auto' (latest.pth)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA (train.amp_dtype)")
    p.add_argument("--eval-only", metavar="CKPT", help="only evaluate this checkpoint on the test split")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        work_dir = args.work_dir or os.path.join("work_dirs", cfg.name)
        if args.eval_only:
            test_checkpoint(args.eval_only, cfg, out_dir=os.path.join(work_dir, "eval"), device=args.device,
                            amp=args.amp)
            return 0
        metrics = train(cfg, work_dir, resume=args.resume, device=args.device, amp=args.amp or None)
        if metrics is not None:
            print(f"final {metrics['metric']} mAP: {100 * metrics['mAP']:.2f}  (work dir: {work_dir})")
        return 0
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except (ConfigError, DataError, EvalError, CheckpointError, WeightsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
