"""Detection evaluation: VOC AP (identical to the devkit's voc_eval.py), COCO via pycocotools, results files.

    metrics = evaluate(dataset, detections, metric="voc07", out_dir="work_dirs/x/results")
    print(format_table(metrics))

Why a detector misses (TIDE errors, confusion matrix, AP by size, report.html): `analyze` (analysis.py)
and `analyze_dataset` / `analyze_results_dir` (report.py).

Detections: one dict per image (boxes [N, 4] xyxy 0-based continuous pixels, labels [N] in 1..K,
scores [N]), aligned with the dataset's index.
"""
from .analysis import analyze
from .coco import COCO_STATS, coco_from_annotations, evaluate_coco
from .errors import EvalError
from .evaluate import evaluate, evaluate_voc, format_table, ground_truth_arrays
from .report import analyze_dataset, analyze_results_dir, tide_summary
from .results import (
    coco_results,
    find_voc_result_classes,
    load_coco_with_results,
    load_voc_with_results,
    read_coco_results,
    read_voc_results,
    write_coco_results,
    write_voc_results,
)
from .voc import voc_ap

__all__ = [
    "EvalError", "evaluate", "evaluate_voc", "evaluate_coco", "format_table", "voc_ap",
    "write_voc_results", "read_voc_results", "write_coco_results", "read_coco_results", "coco_results",
    "find_voc_result_classes", "coco_from_annotations", "ground_truth_arrays", "COCO_STATS",
    "analyze", "analyze_dataset", "analyze_results_dir", "tide_summary", "load_voc_with_results",
    "load_coco_with_results",
]
