"""mAP of a checkpoint on its config's test split: python tools/test_det.py [CONFIG] CHECKPOINT [--out DIR].

The code is in vggdet/cli/test.py (also installed as `vggdet-test`);
`python tools/test_det.py --help` lists the flags."""
import sys

from vggdet.cli.test import main

if __name__ == "__main__":
    sys.exit(main())
