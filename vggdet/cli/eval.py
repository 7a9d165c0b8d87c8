"""Score an existing results file against ground truth; no model needed.

    python tools/eval_det.py --voc-root VOCdevkit/VOC2007 --split test --results RESULTS_DIR --metric voc07 \
        [--out metrics.json] [--classes a,b,c] [--iou 0.5] [--plot DIR]
    python tools/eval_det.py --coco-ann instances_val2017.json --results dets.json [--out metrics.json]

VOC results: the devkit's comp4_det_<split>_<class>.txt files. Prints a per-class AP table and the mean;
errors are one line on stderr, exit status 2. Also installed as `vggdet-eval`.
"""
from __future__ import annotations

import argparse
import os
import warnings

from vggdet.cli import add_results_arguments, command, prog, voc_classes_argument
from vggdet.fileio import ensure_writable, write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog("eval_det.py"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_results_arguments(p)
    p.add_argument("--metric", choices=["voc07", "voc10", "coco"], default=None,
                   help="default: voc07 with --voc-root, coco with --coco-ann")
    p.add_argument("--iou", type=float, default=0.5, help="VOC IoU threshold (a match needs IoU > this)")
    p.add_argument("--out", help="write the metrics as JSON to this file (or to metrics.json in this folder)")
    p.add_argument("--plot", help="VOC: save per-class precision-recall curves (PNG) in this folder")
    return p.parse_args(argv)


def run_voc(args: argparse.Namespace) -> dict:
    from vggdet.evaluation import evaluate, evaluate_voc, load_voc_with_results

    ds, dets = load_voc_with_results(args.voc_root, args.split, args.results, voc_classes_argument(args.classes))
    _warn_sparse(len(dets), len(ds), args.results)
    metric = args.metric or "voc07"
    if metric == "coco":
        return evaluate(ds, [dets.get(str(i), _EMPTY) for i in ds.image_ids], "coco")
    metrics = evaluate_voc(ds, dets, ds.classes, metric, args.iou, return_curves=bool(args.plot))
    if args.plot:
        from vggdet.evaluation.plot import plot_pr_curves

        paths = plot_pr_curves(metrics["curves"], args.plot, metrics)
        print(f"saved {len(paths)} precision-recall plot(s) to {args.plot}")
    metrics.pop("curves", None)
    return metrics


_EMPTY = {"boxes": [], "labels": [], "scores": []}


def _warn_sparse(with_dets: int, total: int, results: str) -> None:
    """Results for a few images score as a (low) mAP over all of them: say so when most have none."""
    if total and with_dets < total / 2:
        warnings.warn(f"{results}: {total - with_dets} of {total} images have no detections at all; "
                      "results for part of the split score as misses on the rest", stacklevel=2)


def run_coco(args: argparse.Namespace) -> dict:
    from vggdet.data.coco import load_coco
    from vggdet.evaluation import EvalError, evaluate_coco, read_coco_results

    if args.metric not in (None, "coco"):
        raise EvalError(f"--coco-ann: only --metric coco is supported, got {args.metric}")
    gt = load_coco(args.coco_ann)  # pycocotools' COCO object (the ground truth)
    results = read_coco_results(args.results, set(gt.getImgIds()), set(gt.getCatIds()))
    _warn_sparse(len({r["image_id"] for r in results}), len(gt.getImgIds()), args.results)
    return evaluate_coco(gt, results)


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    out = metrics_path(args.out)
    if args.plot:
        ensure_writable(args.plot, "--plot")
    metrics = run_voc(args) if args.voc_root else run_coco(args)
    from vggdet.evaluation import format_table

    print(format_table(metrics))
    if out:
        write_json(out, metrics)
        print(f"metrics written to {out}")
    return 0


def metrics_path(out):
    """--out: a file, or an existing folder to write metrics.json into; checked before any work."""
    if not out:
        return None
    if os.path.isdir(out):
        out = os.path.join(out, "metrics.json")
    ensure_writable(os.path.dirname(os.path.abspath(out)))
    return out
