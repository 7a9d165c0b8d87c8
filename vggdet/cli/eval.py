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

from vggdet.cli import command
from vggdet.evaluation import EvalError, evaluate, evaluate_coco, evaluate_voc, format_table, read_voc_results
from vggdet.evaluation.results import guess_voc_classes
from vggdet.fileio import ensure_writable, write_json


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """Ground truth and results, the same for eval_det and analyze_det: --voc-root | --coco-ann, --results,
    --split, --classes."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--voc-root", help="a VOC2007-style folder (Annotations/, ImageSets/Main/)")
    src.add_argument("--coco-ann", help="COCO instances JSON (ground truth)")
    p.add_argument("--results", required=True, help="VOC: folder of comp4_det_<split>_<class>.txt; COCO: JSON")
    p.add_argument("--split", default="test", help="VOC split (ImageSets/Main/<split>.txt)")
    p.add_argument("--classes", default=None,
                   help="comma-separated VOC class names, or 'auto' (from the XML files); default: from the "
                        "results file names (the 20 VOC classes when all of them are VOC classes)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eval_det.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_arguments(p)
    p.add_argument("--metric", choices=["voc07", "voc10", "coco"], default=None,
                   help="default: voc07 with --voc-root, coco with --coco-ann")
    p.add_argument("--iou", type=float, default=0.5, help="VOC IoU threshold (a match needs IoU > this)")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--plot", help="VOC: save per-class precision-recall curves (PNG) in this folder")
    return p.parse_args(argv)


def load_voc(args: argparse.Namespace) -> tuple:
    """(VOCDetection, {image_id: detections}) from --voc-root / --split / --results / --classes."""
    from vggdet.data.voc import VOCDetection

    if args.classes is None:
        classes = guess_voc_classes(args.results, args.split)
    else:
        classes = args.classes if args.classes == "auto" else [c.strip() for c in args.classes.split(",")]
    ds = VOCDetection(args.voc_root, args.split, classes=classes)
    return ds, read_voc_results(args.results, args.split, ds.classes, ds.image_ids)


def run_voc(args: argparse.Namespace) -> dict:
    ds, dets = load_voc(args)
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
    from vggdet.evaluation import read_coco_results

    if args.metric not in (None, "coco"):
        raise EvalError(f"--coco-ann: only --metric coco is supported, got {args.metric}")
    gt = load_coco(args.coco_ann)
    results = read_coco_results(args.results, set(gt.getImgIds()), set(gt.getCatIds()))
    _warn_sparse(len({r["image_id"] for r in results}), len(gt.getImgIds()), args.results)
    return evaluate_coco(gt, results)


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.out:
        ensure_writable(os.path.dirname(os.path.abspath(args.out)))
    if args.plot:
        ensure_writable(args.plot, "--plot")
    metrics = run_voc(args) if args.voc_root else run_coco(args)
    print(format_table(metrics))
    if args.out:
        write_json(args.out, metrics)
    return 0
