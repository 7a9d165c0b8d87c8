"""Generate the shapes detection dataset: python tools/make_shapes.py --out DIR --format voc --num 500.

Also installed as `vggdet-shapes`.
"""
from __future__ import annotations

import argparse
import os

from vggdet.cli import command, prog
from vggdet.fileio import OutputError, ensure_writable


def check_out(folder: str) -> None:
    """--out must be a new or empty folder that can be written: checked before any image is drawn."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"--out {folder}: a file, not a folder; give a new or empty folder")
    if os.path.isdir(folder) and os.listdir(folder):
        raise OutputError(f"--out {folder}: not empty; give a new or empty folder")
    ensure_writable(folder)


@command
def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("make_shapes.py"), description=__doc__)
    p.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    p.add_argument("--format", choices=["voc", "coco"], default="voc")
    p.add_argument("--num", type=int, default=500, help="total images; 80%% trainval, 20%% test")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    check_out(a.out)
    from vggdet.data.shapes import make_shapes  # after parsing: --help does not wait for OpenCV

    num_test = max(1, a.num // 5)
    out = make_shapes(a.out, a.format, a.num - num_test, num_test, a.size, a.seed)
    print(f"wrote {a.num - num_test} trainval + {num_test} test images ({a.format}) to {out}")
    return 0
