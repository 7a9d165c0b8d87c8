"""Score a results file against ground truth: python tools/eval_det.py --voc-root DIR --results DIR | --coco-ann F --results F.

The code is in vggdet/cli/eval.py (also installed as `vggdet-eval`);
`python tools/eval_det.py --help` lists the flags."""
import sys

from vggdet.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
