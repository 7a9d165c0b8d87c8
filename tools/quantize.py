"""int8 quantization of a checkpoint: python tools/quantize.py CHECKPOINT --out model_int8 [--calib N].

The code is in vggdet/cli/quantize.py (also installed as `vggdet-quantize`);
`python tools/quantize.py --help` lists the flags."""
import sys

from vggdet.cli.quantize import main

if __name__ == "__main__":
    sys.exit(main())
