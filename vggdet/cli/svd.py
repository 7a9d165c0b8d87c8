"""Truncated-SVD compression of a trained checkpoint's fc6/fc7 (Fast R-CNN §3.1).

    python tools/compress_svd.py work_dirs/voc_vgg16/latest.pth --rank-fc6 1024 --rank-fc7 256 --out small.pth

The output loads like any checkpoint (`Detector.from_checkpoint`, tools/test_det.py): the ranks are
recorded in its config. Measure the mAP change with tools/test_det.py and the speed with
benchmarks/bench_svd.py. Also installed as `vggdet-svd`.
"""
from __future__ import annotations

import argparse
import os

from vggdet.cli import command, prog


@command
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=prog("compress_svd.py"), description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--rank-fc6", type=int, default=1024, help="rank of fc6 (paper: 1024); 0 = keep fc6")
    p.add_argument("--rank-fc7", type=int, default=256, help="rank of fc7 (paper: 256); 0 = keep fc7")
    p.add_argument("--out", required=True, help="the compressed checkpoint to write")
    a = p.parse_args(argv)
    if os.path.abspath(a.out) == os.path.abspath(a.checkpoint):
        p.error("--out must differ from the input checkpoint")
    from vggdet.deploy.svd import compress_checkpoint
    from vggdet.fileio import ensure_writable

    ensure_writable(os.path.dirname(os.path.abspath(a.out)))

    summary = compress_checkpoint(a.checkpoint, a.rank_fc6 or None, a.rank_fc7 or None, a.out)
    for name, s in summary.items():
        print(f"{name}: {s['shape'][1]}->{s['shape'][0]} rank {s['rank']}: params {s['params_before']:,} -> "
              f"{s['params_after']:,} ({s['params_after'] / s['params_before']:.1%}), "
              f"relative weight error {s['rel_error']:.4f}")
    print(f"wrote {a.out}")
    return 0
