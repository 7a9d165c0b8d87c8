"""Generate the shapes dataset: python tools/make_shapes.py --out DIR --format voc --num 500.

The code is in vggdet/cli/shapes.py (also installed as `vggdet-shapes`);
`python tools/make_shapes.py --help` lists the flags."""
import sys

from vggdet.cli.shapes import main

if __name__ == "__main__":
    sys.exit(main())
