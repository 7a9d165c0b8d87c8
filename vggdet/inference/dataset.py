"""Dataset evaluation: run a predictor over a dataset's test split and score the detections.

What training's periodic evaluation and tools/test_det.py share, for every backend alike:
`predict_dataset` (predictor -> detections in dataset order, sharded across ranks under torchrun),
`evaluate_predictor` (+ metrics, results files and, when asked, the error analysis of the detections in
memory: `score_detections`, which tools/test_det.py --ray shares) and `evaluate_checkpoint` (a model file on
its config's test split).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm import tqdm

from vggdet import distributed as ddp
from vggdet.data import build_dataloader
from vggdet.evaluation import evaluate
from vggdet.fileio import write_json
from vggdet.inference.base import Predictor, empty_detections, is_onnx_file, load_predictor

__all__ = ["Evaluation", "predict_dataset", "evaluate_predictor", "score_detections", "evaluate_checkpoint",
           "evaluate_file", "write_metrics"]


@dataclass
class Evaluation:
    """One evaluation: the metrics, the dataset, its detections (dataset order) and the analysis (when run)."""

    metrics: dict
    dataset: object
    detections: list
    analysis: Optional[dict] = None
    precision: str = ""  # what ran, e.g. "bf16 (auto: this CPU ... has native bf16)"


def predict_dataset(predictor: Predictor, loader, progress: bool = True) -> Optional[list]:
    """Detections for every image of `loader`'s dataset, as numpy dicts in dataset order, on rank 0.

    Under torch.distributed each rank runs its shard (the loader's sampler); rank 0 gathers (other ranks
    get None). External proposals in the targets go to the predictor with their images.
    """
    local: dict = {}
    start, n = time.perf_counter(), 0
    bar = tqdm(loader, desc="test", unit="batch", disable=not (progress and ddp.is_main()), dynamic_ncols=True)
    for images, targets in bar:
        props = [t["proposals"] for t in targets] if "proposals" in targets[0] else None
        for t, d in zip(targets, predictor.predict_batch(images, proposals=props)):
            local[t["index"]] = d
        n += len(images)
        bar.set_postfix(img_s=f"{n / (time.perf_counter() - start):.1f}")
    parts = ddp.gather_to_main(local)
    if not ddp.is_main():
        return None
    merged = {k: v for p in parts for k, v in p.items()}
    return [merged.get(i, empty_detections()) for i in range(len(loader.dataset))]


def evaluate_predictor(predictor: Predictor, loader=None, results_dir: Optional[str] = None,
                       analysis_dir: Optional[str] = None, progress: bool = True) -> Optional[Evaluation]:
    """`predictor` on its config's test split (`loader`, built when None; sharded under torchrun).

    Rank 0 gets the Evaluation (other ranks None); `results_dir`: where the devkit / COCO results files go
    (see vggdet.evaluation.evaluate); `analysis_dir`: also the error analysis of these detections
    (vggdet/evaluation/report.py).
    """
    cfg = predictor.config
    if loader is None:
        loader = build_dataloader(cfg, "test", ddp.setup_distributed(torch.device(predictor.device)))
    dets = predict_dataset(predictor, loader, progress)
    if dets is None:
        return None
    return score_detections(cfg, loader.dataset, dets, results_dir, analysis_dir, progress,
                            precision=predictor.precision_text())


def score_detections(cfg, dataset, dets: list, results_dir: Optional[str] = None,
                     analysis_dir: Optional[str] = None, progress: bool = True, precision: str = "") -> Evaluation:
    """The Evaluation of `dets` (numpy dicts in dataset order) by `cfg.test`'s metric; `results_dir`: the
    results files; `analysis_dir`: also the error analysis; `precision`: what ran. However the detections
    were made (one process, torchrun, Ray: vggdet/inference/ray_data.py)."""
    metrics = evaluate(dataset, dets, metric=cfg.test.metric, iou_thresh=cfg.test.iou_thresh, out_dir=results_dir)
    result = Evaluation(metrics, dataset, dets, precision=precision)
    if analysis_dir is not None:
        from vggdet.evaluation.report import analyze_dataset

        result.analysis = analyze_dataset(dataset, dets, analysis_dir, progress=progress, eval_metrics=metrics)
    return result


def evaluate_checkpoint(path: str, config: Optional[str] = None, overrides: Optional[list] = None,
                        results_dir: Optional[str] = None, analysis_dir: Optional[str] = None) -> Optional[dict]:
    """Score the model file `path` (checkpoint, `.onnx` or int8 export) on its config's test split: the
    metrics on rank 0, None on other ranks. `config`: a config file instead of the embedded config;
    `overrides`: `key=value` items (device and amp are `runtime.*` keys)."""
    result = evaluate_file(path, config, overrides, results_dir, analysis_dir)
    return result.metrics if result is not None else None


def evaluate_file(path: str, config: Optional[str] = None, overrides: Optional[list] = None,
                  results_dir: Optional[str] = None, analysis_dir: Optional[str] = None) -> Optional[Evaluation]:
    """`evaluate_checkpoint`, returning the whole Evaluation (tools/test_det.py prints its analysis); with
    `results_dir`, `metrics.json` (the metrics and the model file's path) goes there too."""
    if is_onnx_file(path) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"{path}: ONNX models are tested in one process; run without torchrun")
    try:
        with load_predictor(path, None, config, overrides) as predictor:
            result = evaluate_predictor(predictor, None, results_dir, analysis_dir)
    finally:
        ddp.cleanup()
    if result is not None and results_dir is not None:
        write_metrics(results_dir, result, path)
    return result


def write_metrics(results_dir: str, result: Evaluation, path: str) -> None:
    """`results_dir/metrics.json`: the metrics and the model file's path."""
    write_json(os.path.join(results_dir, "metrics.json"), {**result.metrics, "checkpoint": path})
