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

from vggdet.cli import command
from vggdet.cli.eval import add_input_arguments, load_voc
from vggdet.evaluation.analysis import ERROR_TYPES, SPECIAL_TYPES
from vggdet.fileio import ensure_writable


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="analyze_det.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_arguments(p)
    p.add_argument("--out", required=True, help="report folder (analysis.json, report.html, PNG figures)")
    p.add_argument("--images", default=None,
                   help="COCO: the image folder, for the gallery (default: <ann folder>/../<split name>)")
    p.add_argument("--score-thr", type=float, default=0.5, help="score threshold of the confusion matrix")
    p.add_argument("--top", type=int, default=12, help="gallery: this many false positives, half as many misses")
    return p.parse_args(argv)


def load_coco(args: argparse.Namespace) -> tuple:
    """(COCODetection, {image_id: detections}); the images are only needed for the gallery crops."""
    from vggdet.data.coco import COCODetection
    from vggdet.evaluation import read_coco_results
    from vggdet.evaluation.report import coco_detections

    images = args.images
    if images is None:  # annotations/instances_val2017.json -> val2017/
        stem = os.path.splitext(os.path.basename(args.coco_ann))[0].replace("instances_", "")
        images = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.coco_ann))), stem)
    ds = COCODetection(images, args.coco_ann, train=False)
    results = read_coco_results(args.results, set(ds.image_ids), set(ds.cat_id_to_label))
    return ds, coco_detections(results, ds.cat_id_to_label)


def format_summary(a: dict) -> str:
    """TIDE's summary table (AP50 and the dAPs, in AP points), the error counts and the top confusions."""
    names = ("AP50",) + ERROR_TYPES + SPECIAL_TYPES
    lines = ["  ".join(f"{n:>8}" for n in ("",) + names),
             "  ".join([f"{'dAP':>8}"] + [f"{a['tide'][n]:8.2f}" for n in names]),
             "  ".join([f"{'count':>8}", f"{'':>8}"] + [f"{a['tide_counts'][n]:8d}" for n in ERROR_TYPES])]
    pairs = [f"{p['gt']} -> {p['predicted']} ({p['count']})" for p in a["confused_pairs"][:3]]
    lines.append(f"most confused at score >= {a['confusion']['score_thresh']:g}: {', '.join(pairs) or 'none'}")
    pairs = [f"{p['gt']} -> {p['predicted']} ({p['count']})" for p in a["cls_error_pairs"][:3]]
    lines.append(f"most Cls errors (any score, box class -> predicted): {', '.join(pairs) or 'none'}")
    if a["empty"]:
        lines.append("the results contain no detections: every box is missed")
    return "\n".join(lines)


@command
def main(argv=None) -> int:
    args = parse_args(argv)
    ensure_writable(args.out)
    ds, dets = load_voc(args) if args.voc_root else load_coco(args)
    from vggdet.evaluation.report import analyze_dataset

    a = analyze_dataset(ds, dets, args.out, score_thresh=args.score_thr, top_errors=args.top,
                        title=f"Error analysis: {args.results}")
    print(format_summary(a))
    print(f"report written to {os.path.join(args.out, 'report.html')}")
    return 0
