"""Dataset evaluation: run a model over a dataset's images and score the detections.

What training's periodic evaluation and tools/test_det.py share: `predict_dataset` (model -> detections in
dataset order, sharded across ranks under torchrun), `evaluate_model` (+ metrics) and
`evaluate_checkpoint` (a checkpoint on its config's test split).
"""
from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from vggdet import distributed as ddp
from vggdet.checkpoint import load_detector
from vggdet.data import build_dataloader
from vggdet.evaluation import evaluate
from vggdet.model.tta import with_tta
from vggdet.onnx_predictor import OnnxDetector, is_onnx_file
from vggdet.runtime import autocast, detections_to_numpy, inference_dtype, resolve_device

__all__ = ["predict_dataset", "evaluate_model", "evaluate_checkpoint"]


def predict_dataset(model: torch.nn.Module, loader, device: torch.device, dtype: Optional[torch.dtype] = None,
                    progress: bool = True) -> Optional[list]:
    """Detections for every image of `loader`'s dataset, as numpy dicts in dataset order, on rank 0.

    `dtype`: autocast dtype (None = fp32). Under torch.distributed each rank runs its shard; rank 0
    gathers (other ranks get None).
    """
    model.eval()

    def run(images: list, targets: list) -> list:
        images = [i.to(device, non_blocking=True) for i in images]
        props = [t["proposals"].to(device) for t in targets] if "proposals" in targets[0] else None
        with autocast(device, dtype):
            dets = model(images, proposals=props) if props is not None else model(images)
        return [detections_to_numpy(d) for d in dets]

    with torch.inference_mode():
        return _collect(run, loader, progress)


def _collect(run, loader, progress: bool) -> Optional[list]:
    """`run(images, targets)` -> numpy detections over the loader; gathered in dataset order on rank 0."""
    local: dict = {}
    start, n = time.perf_counter(), 0
    bar = tqdm(loader, desc="test", unit="batch", disable=not (progress and ddp.is_main()), dynamic_ncols=True)
    for images, targets in bar:
        for t, d in zip(targets, run(images, targets)):
            local[t["index"]] = d
        n += len(images)
        bar.set_postfix(img_s=f"{n / (time.perf_counter() - start):.1f}")
    parts = ddp.gather_to_main(local)
    if not ddp.is_main():
        return None
    merged = {k: v for p in parts for k, v in p.items()}
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "scores": np.zeros(0, np.float32)}
    return [merged.get(i, empty) for i in range(len(loader.dataset))]


def evaluate_model(model: torch.nn.Module, loader, device: torch.device, metric: str, iou_thresh: float,
                   results_dir: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> Optional[dict]:
    """predict_dataset + vggdet.evaluation.evaluate; the metrics dict on rank 0, None elsewhere.

    `results_dir`: where to write the devkit / COCO results files (see `evaluate`).
    """
    dets = predict_dataset(model, loader, device, dtype)
    if dets is None:
        return None
    return evaluate(loader.dataset, dets, metric=metric, iou_thresh=iou_thresh, out_dir=results_dir)


def evaluate_checkpoint(path: str, config: Optional[str] = None, overrides: Optional[list] = None,
                        results_dir: Optional[str] = None, analysis_dir: Optional[str] = None) -> Optional[dict]:
    """Score checkpoint `path` on its config's test split: the metrics on rank 0, None on other ranks.

    `config`: a config file instead of the embedded config; `overrides`: `key=value` items (device and
    amp are `runtime.*` keys). Results files go to `results_dir` when given; with `analysis_dir` too, the
    error analysis of those files (vggdet/evaluation/report.py) goes there. A `.onnx` export runs in
    onnxruntime (vggdet/onnx_predictor.py) with the config embedded in it.
    """
    if is_onnx_file(path):
        metrics, dataset = _evaluate_onnx(path, config, overrides, results_dir)
        return _with_analysis(metrics, dataset, results_dir, analysis_dir)
    model, cfg, _ = load_detector(path, config, overrides)
    device = ddp.local_device(resolve_device(cfg.runtime.device))
    distributed = ddp.setup_distributed(device)
    try:
        loader = build_dataloader(cfg, "test", distributed)
        model = with_tta(model, cfg.test.tta.hflip, cfg.test.tta.scales).to(device)
        metrics = evaluate_model(model, loader, device, cfg.test.metric, cfg.test.iou_thresh, results_dir,
                                 inference_dtype(cfg, device))
    finally:
        ddp.cleanup()
    return _with_analysis(metrics, loader.dataset, results_dir, analysis_dir)


def _with_analysis(metrics: Optional[dict], dataset, results_dir: Optional[str],
                   analysis_dir: Optional[str]) -> Optional[dict]:
    """Write the error analysis of the results files into `analysis_dir` (rank 0, when asked)."""
    if metrics is not None and analysis_dir is not None:
        if results_dir is None:
            raise ValueError("the error analysis reads the results files: give results_dir too")
        from vggdet.evaluation.report import analyze_results_dir

        analyze_results_dir(dataset, results_dir, analysis_dir)
    return metrics


def _evaluate_onnx(path: str, config: Optional[str], overrides: Optional[list],
                   results_dir: Optional[str]) -> tuple:
    """An ONNX export on its embedded config's test split, in one process: (metrics, the dataset)."""
    if config is not None:
        raise ValueError(f"{path}: an ONNX export carries its config; drop the CONFIG argument")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"{path}: ONNX models are tested in one process; run without torchrun")
    det = OnnxDetector(path, None, overrides)
    cfg = det.config
    loader = build_dataloader(cfg, "test", False)
    if cfg.model.proposals != "rpn":
        raise ValueError(f"{path}: the export has no RPN")
    dets = _collect(lambda images, targets: det.predict_batch(images), loader, True)
    return evaluate(loader.dataset, dets, metric=cfg.test.metric, iou_thresh=cfg.test.iou_thresh,
                    out_dir=results_dir), loader.dataset
