"""Train a detector: python tools/train_det.py CONFIG [--work-dir DIR] [--resume [CKPT|auto]] [--set k=v ...].

The code is in vggdet/cli/train.py (also installed as `vggdet-train`);
`python tools/train_det.py --help` lists the flags."""
import sys

from vggdet.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
