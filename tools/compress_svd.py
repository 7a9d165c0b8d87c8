"""Truncated-SVD compression of fc6/fc7: python tools/compress_svd.py CKPT --rank-fc6 1024 --rank-fc7 256 --out OUT.

The code is in vggdet/cli/svd.py (also installed as `vggdet-svd`);
`python tools/compress_svd.py --help` lists the flags."""
import sys

from vggdet.cli.svd import main

if __name__ == "__main__":
    sys.exit(main())
