"""Truncated-SVD compression of a trained checkpoint's fc6/fc7 (Fast R-CNN §3.1).

    python tools/compress_svd.py work_dirs/voc_vgg16/latest.pth --rank-fc6 1024 --rank-fc7 256 --out small.pth

The output loads like any checkpoint (`Detector.from_checkpoint`, tools/test_det.py): the ranks are
recorded in its config. Measure the mAP change with tools/test_det.py and the speed with
benchmarks/bench_svd.py.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vggdet.checkpoint import CheckpointError  # noqa: E402
from vggdet.svd import SVDError, compress_checkpoint  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--rank-fc6", type=int, default=1024, help="rank of fc6 (paper: 1024); 0 = keep fc6")
    p.add_argument("--rank-fc7", type=int, default=256, help="rank of fc7 (paper: 256); 0 = keep fc7")
    p.add_argument("--out", required=True, help="the compressed checkpoint to write")
    a = p.parse_args(argv)
    if os.path.abspath(a.out) == os.path.abspath(a.checkpoint):
        p.error("--out must differ from the input checkpoint")
    try:
        summary = compress_checkpoint(a.checkpoint, a.rank_fc6 or None, a.rank_fc7 or None, a.out)
    except (SVDError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, s in summary.items():
        print(f"{name}: {s['shape'][1]}->{s['shape'][0]} rank {s['rank']}: params {s['params_before']:,} -> "
              f"{s['params_after']:,} ({s['params_after'] / s['params_before']:.1%}), "
              f"relative weight error {s['rel_error']:.4f}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
