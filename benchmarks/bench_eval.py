"""VOC AP speed: vggdet's vectorised matching vs a straightforward per-detection loop (voc_eval.py's).

    python benchmarks/bench_eval.py [--images 5000] [--classes 20] [--dets 100]

Synthetic problem: ~3 ground-truth boxes per (image, class) where the class is present, ~100 detections
per image (most near a ground-truth box, the rest random). Both implementations must give identical APs
(asserted). One thread for numpy and torch. Prints a markdown table.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vggdet.evaluation import evaluate_voc  # noqa: E402
from vggdet.runtime import cpu_model  # noqa: E402


def make_problem(rng, num_images: int, num_classes: int, dets_per_image: int) -> tuple:
    gts, dets = [], []
    for _ in range(num_images):
        present = np.flatnonzero(rng.random(num_classes) < 0.15)
        labels = np.repeat(present + 1, rng.integers(1, 6, len(present)))  # ~3 per present class
        n = len(labels)
        x1, y1 = rng.integers(1, 400, n), rng.integers(1, 400, n)
        vboxes = np.stack([x1, y1, x1 + rng.integers(5, 120, n), y1 + rng.integers(5, 120, n)], 1)
        gt_boxes = (vboxes - [1, 1, 0, 0]).astype(np.float32).reshape(-1, 4)
        gts.append({"boxes": gt_boxes, "labels": labels, "difficult": rng.random(n) < 0.1})
        m = rng.integers(dets_per_image // 2, dets_per_image * 3 // 2 + 1)
        src = rng.integers(0, max(n, 1), m)
        near = (rng.random(m) < 0.6) & (n > 0)
        rand = rng.uniform(0, 400, (m, 2)).repeat(2, 1) + [0, 0, 1, 1] * rng.uniform(5, 120, (m, 4))
        b = np.where(near[:, None], (gt_boxes[src] if n else 0) + rng.normal(0, 8, (m, 4)), rand)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2])
        lab = np.where(near, labels[src] if n else 1, rng.integers(1, num_classes + 1, m))
        dets.append({"boxes": b.astype(np.float32), "labels": lab, "scores": rng.random(m).astype(np.float32)})
    return gts, dets


def loop_voc_ap(gts: list, dets: list, num_classes: int, use_07_metric: bool, thresh: float = 0.5) -> list:
    """voc_eval.py's algorithm as written: per class, a Python loop over the sorted detections."""
    aps = []
    for k in range(1, num_classes + 1):
        recs, npos = [], 0
        for g in gts:
            m = g["labels"] == k
            bbox = g["boxes"][m].astype(np.float64) + [1, 1, 0, 0]
            recs.append({"bbox": bbox, "difficult": g["difficult"][m], "det": [False] * int(m.sum())})
            npos += int((~g["difficult"][m]).sum())
        img, bb, conf = [], [], []
        for i, d in enumerate(dets):
            m = d["labels"] == k
            img += [i] * int(m.sum())
            bb.append(d["boxes"][m].astype(np.float64) + [1, 1, 0, 0])
            conf.append(d["scores"][m].astype(np.float64))
        order = np.argsort(-np.concatenate(conf), kind="stable")
        BB, img = np.concatenate(bb)[order], [img[j] for j in order]
        tp, fp = np.zeros(len(img)), np.zeros(len(img))
        for d in range(len(img)):
            R, b = recs[img[d]], BB[d]
            ovmax, BBGT = -np.inf, R["bbox"]
            if BBGT.size > 0:
                ixmin = np.maximum(BBGT[:, 0], b[0])
                iymin = np.maximum(BBGT[:, 1], b[1])
                ixmax = np.minimum(BBGT[:, 2], b[2])
                iymax = np.minimum(BBGT[:, 3], b[3])
                iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
                ih = np.maximum(iymax - iymin + 1.0, 0.0)
                inters = iw * ih
                uni = ((b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0)
                       + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
                overlaps = inters / uni
                ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
            if ovmax > thresh:
                if not R["difficult"][jmax]:
                    if not R["det"][jmax]:
                        tp[d], R["det"][jmax] = 1.0, True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        fp, tp = np.cumsum(fp), np.cumsum(tp)
        rec, prec = tp / float(npos), tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps.append(_loop_ap(rec, prec, use_07_metric))
    return aps


def _loop_ap(rec, prec, use_07_metric: bool) -> float:
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            ap = ap + (0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])) / 11.0
        return float(ap)
    mrec, mpre = np.concatenate(([0.0], rec, [1.0])), np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--dets", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3, help="best of N for the vectorised version")
    args = p.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    gts, dets = make_problem(np.random.default_rng(0), args.images, args.classes, args.dets)
    classes = [f"c{k}" for k in range(1, args.classes + 1)]
    n_det, n_gt = sum(len(d["scores"]) for d in dets), sum(len(g["labels"]) for g in gts)
    rows = []
    for metric in ("voc07", "voc10"):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ours = evaluate_voc(gts, dets, classes, metric=metric)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = loop_voc_ap(gts, dets, args.classes, use_07_metric=metric == "voc07")
        t_loop = time.perf_counter() - t0
        assert [ours["per_class"][c] for c in classes] == ref, "vectorised AP differs from the loop"
        rows.append((metric, min(times), t_loop, ours["mAP"]))
    print(f"{args.images} images, {args.classes} classes, {n_det} detections, {n_gt} gt boxes; "
          f"1 thread; {cpu_model()}, {os.cpu_count()} CPUs\n")
    print("| metric | vggdet (s) | per-detection loop (s) | speedup | mAP (identical) |")
    print("|---|---:|---:|---:|---:|")
    for metric, t_ours, t_loop, m in rows:
        print(f"| {metric} | {t_ours:.3f} | {t_loop:.2f} | {t_loop / t_ours:.1f}x | {m:.6f} |")


if __name__ == "__main__":
    main()
