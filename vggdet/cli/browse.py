"""Save images of a split with their (augmented) boxes drawn, and print per-class object counts.

python tools/browse_dataset.py CONFIG --split train --out DIR --num 16 [--set key=value ...]

Also installed as `vggdet-browse`.
"""
from __future__ import annotations

import argparse
import os
from collections import Counter

from vggdet.cli import add_set_argument, command, prog, split_set_items
from vggdet.config import load_config
from vggdet.fileio import ensure_writable


@command
def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("browse_dataset.py"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=16)
    add_set_argument(p)
    a = p.parse_args(split_set_items(argv))
    ensure_writable(a.out)
    import cv2  # after parsing: --help does not wait for OpenCV or torch

    from vggdet.data import build_dataset
    from vggdet.inference.draw import draw_boxes

    cfg = load_config(a.config, a.set)
    ds = build_dataset(cfg, a.split)
    os.makedirs(a.out, exist_ok=True)
    for i in range(min(a.num, len(ds))):
        img, t = ds[i]
        names = [ds.classes[k - 1] for k in t["labels"]]
        drawn = draw_boxes(img, t["boxes"], names, class_ids=list(t["labels"]))
        cv2.imwrite(os.path.join(a.out, f"{i:04d}_{t['image_id']}.jpg"), drawn[:, :, ::-1])
    counts = Counter()
    for i in range(len(ds)):  # the full ground truth, difficult included; no image decoding
        counts.update(int(k) for k in ds.get_annotation(i)["labels"])
    print(f"{a.split}: {len(ds)} images, {sum(counts.values())} objects; saved {min(a.num, len(ds))} to {a.out}")
    for k, name in enumerate(ds.classes, start=1):
        print(f"  {name:<20s} {counts[k]}")
    return 0
