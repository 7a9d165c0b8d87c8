"""Draw a split's (augmented) boxes and count objects: python tools/browse_dataset.py CONFIG --out DIR.

The code is in vggdet/cli/browse.py (also installed as `vggdet-browse`);
`python tools/browse_dataset.py --help` lists the flags."""
import sys

from vggdet.cli.browse import main

if __name__ == "__main__":
    sys.exit(main())
