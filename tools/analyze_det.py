"""Why a detector misses (TIDE errors, confusion matrix, PR curves, HTML report):
python tools/analyze_det.py --voc-root DIR --results DIR --out DIR | --coco-ann F --results F --out DIR.

The code is in vggdet/cli/analyze.py (also installed as `vggdet-analyze`);
`python tools/analyze_det.py --help` lists the flags."""
import sys

from vggdet.cli.analyze import main

if __name__ == "__main__":
    sys.exit(main())
