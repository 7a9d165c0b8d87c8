"""Why a detector misses: TIDE error breakdown, confusion matrix, PR curves and an HTML report.

    python tools/analyze_det.py --voc-root VOCdevkit/VOC2007 --split test --results RESULTS_DIR --out report/ \
        [--classes a,b,c] [--score-thr 0.5]
    python tools/analyze_det.py --coco-ann instances_val2017.json --results dets.json --out report/ [--images DIR]

The inputs are tools/eval_det.py's (VOC: the devkit's comp4_det_<split>_<class>.txt files; COCO: a results
JSON). Writes analysis.json, report.html (self-contained: open it from disk) and its PNG figures into --out
and prints the TIDE summary. Errors are one line on stderr, exit status 2. Also installed as `vggdet-analyze`.
"""
from __future__ import annotations

import argparse
import os

from vggdet.cli import add_results_arguments, command, prog, voc_classes_argument
from vggdet.fileio import ensure_writable


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog("analyze_det.py"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_results_arguments(p)
    p.add_argument("--out", required=True, help="report folder (analysis.json, report.html, PNG figures)")
    p.add_argument("--images", default=None,
                   help="COCO: the image folder, for the gallery (default: <ann folder>/../<split name>)")
    p.add_argument("--score-thr", type=float, default=0.5, help="score threshold of the confusion matrix")
    p.add_argument("--top", type=int, default=12, help="gallery: this many false positives, half as many misses")
    return p.parse_args(argv)


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    ensure_writable(args.out)
    from vggdet.evaluation import analyze_dataset, load_coco_with_results, load_voc_with_results, tide_summary

    if args.voc_root:
        ds, dets = load_voc_with_results(args.voc_root, args.split, args.results, voc_classes_argument(args.classes))
    else:
        ds, dets = load_coco_with_results(args.coco_ann, args.results, args.images)
    a = analyze_dataset(ds, dets, args.out, score_thresh=args.score_thr, top_errors=args.top,
                        title=f"Error analysis: {args.results}")
    print(tide_summary(a))
    print(f"report written to {os.path.join(args.out, 'report.html')}")
    return 0
