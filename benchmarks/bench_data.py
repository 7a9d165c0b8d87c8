"""Decode + augmentation throughput per worker (single process) on the BCCD JPEGs (640x480).

python benchmarks/bench_data.py [--root ../shared/data/bccd/VOCdevkit/VOC2007] [--num 200]
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

from vggdet.config import AugmentConfig
from vggdet.data import VOCDetection
from vggdet.data.transforms import build_transform

DEFAULT_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "bccd", "VOCdevkit", "VOC2007")
RECIPES = {
    "decode only": None,
    "flip (default)": AugmentConfig(),
    "flip + photometric": AugmentConfig(photometric=True),
    "all (scale, crop, photo, flip)": AugmentConfig(photometric=True, random_crop=True, scale_jitter=[0.8, 1.2]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.add_argument("--num", type=int, default=200)
    a = p.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCCD's two zero-area boxes
        ds = VOCDetection(a.root, "trainval", classes="auto")
    n = min(a.num, len(ds))
    print("| pipeline | images/s per worker |\n|---|---|")
    for name, aug in RECIPES.items():
        ds.transform = build_transform(aug, train=True, seed=0) if aug else None
        ds[0]  # warm-up
        t = time.perf_counter()
        for i in range(n):
            ds[i]
        print(f"| {name} | {n / (time.perf_counter() - t):.0f} |")


if __name__ == "__main__":
    main()
