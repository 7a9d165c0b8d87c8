"""Sliced inference (test.tiles) vs the plain prediction: recall, VOC07 mAP and time per image.

    python benchmarks/bench_tiles.py SHAPES_CKPT [--grid 5] [--tiles 256,0.25] [--bccd BCCD_CKPT --tiles-bccd 320,0.25]

Small objects from the project's own data: the shapes test split (generated again with the checkpoint's
data.shapes_* settings) pasted k x k into large canvases, so each object is k times smaller after the
full-image resize; the boxes are the shapes annotations, shifted. With --bccd, the BCCD test split
(640x480, 72 images) with a BCCD checkpoint. One process, the same images for every setting; recall is at
IoU 0.5 over all scores; time is the median seconds per image after a warm-up image.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import machine  # noqa: E402

from vggdet.data import VOCDetection, make_shapes  # noqa: E402
from vggdet.data.image_io import read_image  # noqa: E402
from vggdet.evaluation import evaluate_voc  # noqa: E402
from vggdet.inference import load_predictor  # noqa: E402


def canvases(root: str, grid: int, classes: list) -> tuple:
    """The test split pasted grid x grid per canvas -> (images, ground-truth dicts)."""
    ds = VOCDetection(root, "test", classes=classes)
    images, gts = [], []
    n = len(ds) // (grid * grid)
    for c in range(n):
        tiles, boxes, labels = [], [], []
        for k in range(grid * grid):
            i = c * grid * grid + k
            img, ann = read_image(ds.image_paths[i]), ds.get_annotation(i)
            h, w = img.shape[:2]
            y, x = divmod(k, grid)
            tiles.append(img)
            boxes.append(ann["boxes"] + np.array([x * w, y * h, x * w, y * h]))
            labels.append(ann["labels"])
        rows = [np.concatenate(tiles[r * grid:(r + 1) * grid], axis=1) for r in range(grid)]
        images.append(np.ascontiguousarray(np.concatenate(rows, axis=0)))
        gts.append({"boxes": np.concatenate(boxes), "labels": np.concatenate(labels),
                    "difficult": np.zeros(sum(len(b) for b in boxes), bool)})
    return images, gts


def recall(dets: list, gts: list, iou: float = 0.5) -> float:
    """Share of ground-truth boxes with a same-class detection at IoU >= iou (any score)."""
    found = total = 0
    for d, g in zip(dets, gts):
        total += len(g["boxes"])
        for box, label in zip(g["boxes"], g["labels"]):
            b = d["boxes"][d["labels"] == label]
            if len(b) == 0:
                continue
            x1, y1 = np.maximum(b[:, 0], box[0]), np.maximum(b[:, 1], box[1])
            x2, y2 = np.minimum(b[:, 2], box[2]), np.minimum(b[:, 3], box[3])
            inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
            union = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) + (box[2] - box[0]) * (box[3] - box[1]) - inter
            found += bool((inter / union >= iou).any())
    return found / max(total, 1)


def run(checkpoint: str, images: list, gts: list, classes: list, overrides: list) -> tuple:
    predictor = load_predictor(checkpoint, "cpu", overrides=["runtime.score_thresh=0.01"] + overrides)
    predictor.predict(images[0])  # warm-up (Winograd timing, allocator)
    dets, times = [], []
    for im in images:
        t0 = time.perf_counter()
        dets.append(predictor.predict(im))
        times.append(time.perf_counter() - t0)
    m = evaluate_voc(gts, dets, classes, "voc07")
    return recall(dets, gts), m["mAP"], statistics.median(times), sum(len(d["scores"]) for d in dets)


def table(name: str, checkpoint: str, images: list, gts: list, classes: list, tiles: str) -> None:
    size, _, overlap = tiles.partition(",")
    settings = {"plain": [], f"tiles {tiles} + full image": [f"test.tiles.size={size}"] +
                ([f"test.tiles.overlap={overlap}"] if overlap else []),
                f"tiles {tiles}, no full image": [f"test.tiles.size={size}", "test.tiles.full_image=false"] +
                ([f"test.tiles.overlap={overlap}"] if overlap else [])}
    h, w = images[0].shape[:2]
    print(f"\n{name}: {len(images)} images of {w}x{h}, {sum(len(g['boxes']) for g in gts)} boxes\n")
    print("| setting | recall @0.5 | VOC07 mAP | s / image | detections |")
    print("|---|---|---|---|---|")
    for label, over in settings.items():
        r, m, t, n = run(checkpoint, images, gts, classes, over)
        print(f"| {label} | {100 * r:.1f} % | {100 * m:.2f} % | {t:.3f} | {n} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a shapes checkpoint (e.g. work_dirs/shapes_tiny/latest.pth from make demo)")
    p.add_argument("--grid", type=int, default=5, help="test images per canvas side")
    p.add_argument("--tiles", default="256,0.25", help="SIZE[,OVERLAP] for the shapes canvases")
    p.add_argument("--bccd", help="a BCCD checkpoint (configs/bccd_tiny.py)")
    p.add_argument("--bccd-root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                       "bccd", "VOCdevkit", "VOC2007"))
    p.add_argument("--tiles-bccd", default="320,0.25")
    a = p.parse_args()
    import torch

    torch.set_num_threads(2)
    print(f"Machine: {machine('cpu')}")
    predictor = load_predictor(a.checkpoint, "cpu")
    d, classes = predictor.config.data, predictor.classes
    with tempfile.TemporaryDirectory() as tmp:
        root = make_shapes(os.path.join(tmp, "shapes"), "voc", d.shapes_num_train, d.shapes_num_test, d.shapes_size,
                           d.shapes_seed)
        images, gts = canvases(root, a.grid, classes)
    table(f"shapes test split pasted {a.grid}x{a.grid}", a.checkpoint, images, gts, classes, a.tiles)
    if a.bccd:
        ds = VOCDetection(a.bccd_root, "test", classes=["RBC", "WBC", "Platelets"])
        images = [read_image(p) for p in ds.image_paths]
        gts = [ds.get_annotation(i) for i in range(len(ds))]
        table("BCCD test split", a.bccd, images, gts, ds.classes, a.tiles_bccd)


if __name__ == "__main__":
    main()
