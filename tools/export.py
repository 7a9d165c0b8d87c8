"""Export a checkpoint to ONNX: python tools/export.py CHECKPOINT --out model.onnx [--svd R6,R7] [--fp16].

The code is in vggdet/cli/export.py (also installed as `vggdet-export`);
`python tools/export.py --help` lists the flags."""
import sys

from vggdet.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
