"""Run a model over a dataset and score it: what training's periodic evaluation and tools/test_det.py share."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from vggdet import distributed as ddp
from vggdet.api import detections_to_numpy, resolve_device
from vggdet.checkpoint import config_from_checkpoint, load_checkpoint, load_model_state
from vggdet.config import Config
from vggdet.data import build_dataloader
from vggdet.evaluation import evaluate, format_table
from vggdet.fileio import write_json
from vggdet.model.detector import build_detector


def amp_context(device: torch.device, dtype: Optional[str]):
    """autocast: fp16 or bf16 on CUDA, bf16 on the CPU (inference only); a no-op when dtype is None."""
    if dtype is None or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    if device.type == "cpu" and dtype != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


@torch.inference_mode()
def predict_dataset(model: torch.nn.Module, loader, device: torch.device, amp_dtype: Optional[str] = None,
                    progress: bool = True) -> Optional[list]:
    """Detections for every image of `loader`'s dataset, as numpy dicts in dataset order, on rank 0.

    Under torch.distributed each rank runs its shard; rank 0 gathers (other ranks get None).
    """
    model.eval()
    local: dict = {}
    start, n = time.perf_counter(), 0
    bar = tqdm(loader, desc="test", unit="batch", disable=not (progress and ddp.is_main()), dynamic_ncols=True)
    for images, targets in bar:
        images = [i.to(device, non_blocking=True) for i in images]
        props = [t["proposals"].to(device) for t in targets] if "proposals" in targets[0] else None
        with amp_context(device, amp_dtype):
            dets = model(images, proposals=props) if props is not None else model(images)
        for t, d in zip(targets, dets):
            local[t["index"]] = detections_to_numpy(d)
        n += len(images)
        bar.set_postfix(img_s=f"{n / (time.perf_counter() - start):.1f}")
    parts = ddp.gather_to_main(local)
    if not ddp.is_main():
        return None
    merged = {k: v for p in parts for k, v in p.items()}
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "scores": np.zeros(0, np.float32)}
    return [merged.get(i, empty) for i in range(len(loader.dataset))]


def evaluate_model(model: torch.nn.Module, loader, device: torch.device, metric: str, iou_thresh: float,
                   out_dir: Optional[str] = None, amp_dtype: Optional[str] = None) -> Optional[dict]:
    """predict_dataset + vggdet.evaluation.evaluate; the metrics dict on rank 0, None elsewhere."""
    dets = predict_dataset(model, loader, device, amp_dtype)
    if dets is None:
        return None
    return evaluate(loader.dataset, dets, metric=metric, iou_thresh=iou_thresh, out_dir=out_dir)


def test_checkpoint(ckpt_path: str, cfg=None, out_dir: Optional[str] = None, device: str = "auto",
                    amp: bool = False, overrides: Optional[list] = None) -> Optional[dict]:
    """Evaluate a checkpoint on the config's test split; writes results files and metrics.json to out_dir.

    `cfg`: a Config, a config file path, or None for the checkpoint's embedded config.
    """
    ckpt = load_checkpoint(ckpt_path)
    if not isinstance(cfg, Config):
        cfg = config_from_checkpoint(ckpt, ckpt_path, cfg, overrides)
    dev = ddp.local_device(resolve_device(device))
    distributed = ddp.setup_distributed(dev)
    model = build_detector(cfg, load_weights=False)
    load_model_state(model, ckpt["model"], ckpt_path)
    model.to(dev)
    loader = build_dataloader(cfg, "test", distributed)
    # --amp: the config's dtype on CUDA; bf16 on the CPU (fast where the CPU has bf16 units; see README)
    amp_dtype = None if not amp else cfg.train.amp_dtype if dev.type == "cuda" else "bfloat16"
    metrics = evaluate_model(model, loader, dev, cfg.test.metric, cfg.test.iou_thresh, out_dir, amp_dtype)
    if metrics is not None:
        print(format_table(metrics))
        if out_dir:
            write_json(os.path.join(out_dir, "metrics.json"), {**metrics, "checkpoint": ckpt_path})
    ddp.cleanup()
    return metrics
