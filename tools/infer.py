"""Detect objects in images, folders, globs, videos or a camera: python tools/infer.py [CONFIG] CHECKPOINT INPUT...

The code is in vggdet/cli/infer.py (also installed as `vggdet-infer`);
`python tools/infer.py --help` lists the flags."""
import sys

from vggdet.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
