"""Training: optimiser, schedule, AMP, DDP, checkpoints with exact resume, logging, periodic mAP.

`train(cfg, work_dir)` is what tools/train_det.py calls. The loop per iteration reads like the paper:
images -> model -> {loss_rpn_cls, loss_rpn_box, loss_cls, loss_box} -> sum -> SGD step.
"""
from __future__ import annotations

import glob
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vggdet import distributed as ddp
from vggdet.api import resolve_device
from vggdet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vggdet.config import Config, ConfigError
from vggdet.data import DataError, build_dataloader, build_dataset
from vggdet.evaluation import format_table
from vggdet.fileio import atomic_write, write_json
from vggdet.model.detector import build_detector
from vggdet.predict import amp_context, evaluate_model


class TrainingError(RuntimeError):
    """A run that must stop (NaN loss, out of memory); the message says why and what to try."""


class Interrupted(Exception):
    """SIGINT / SIGTERM arrived: latest.pth was saved; `exit_code` is 130 or 143."""

    def __init__(self, signum: int, path: Optional[str]):
        super().__init__(f"stopped by {signal.Signals(signum).name}: saved {path}; continue with --resume auto")
        self.exit_code = 128 + signum


def check_data(cfg: Config) -> None:
    """Fail early, in one line, when the configured data is not where the config says."""
    d = cfg.data
    if d.format == "shapes":
        return  # generated on first use
    if d.format == "voc":
        paths = [os.path.join(d.root, sub) for sub, _ in d.train_sets + d.test_sets]
        hint = "data.root=/path/to/VOCdevkit"
    else:
        paths = [os.path.join(d.root, p) for p in (d.train_images, d.train_ann, d.test_images, d.test_ann)]
        hint = "data.root=/path/to/coco"
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise DataError(f"data not found: {missing[0]} (data.root={d.root!r} in {cfg.source}); "
                        f"point the config at your copy with --set {hint}")


@dataclass
class State:
    epoch: int = 0  # completed epochs
    iteration: int = 0  # completed iterations (global)
    iter_in_epoch: int = 0  # completed iterations of the current epoch (non-zero after an interrupt)
    best_map: float = -1.0


# ------------------------------------------------------------------------------------- optimiser, LR
def build_optimizer(cfg: Config, model: torch.nn.Module, total_batch: int) -> torch.optim.Optimizer:
    """SGD (or AdamW) with the LR scaled linearly by the total batch; optional 2x LR / no decay for biases."""
    t = cfg.train
    lr = t.lr * total_batch
    weights, biases = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (biases if name.endswith(".bias") else weights).append(p)
    groups = [{"params": weights, "lr": lr, "weight_decay": t.weight_decay},
              {"params": biases, "lr": lr * t.bias_lr_factor, "weight_decay": t.weight_decay if t.bias_decay else 0.0}]
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=t.momentum)


def build_scheduler(cfg: Config, optimizer, iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then x gamma after each epoch in lr_steps (epochs survive batch-size changes)."""
    t = cfg.train
    steps = [s * iters_per_epoch for s in t.lr_steps]

    def factor(it: int) -> float:
        warm = 1.0
        if it < t.warmup_iters:
            alpha = it / max(1, t.warmup_iters)
            warm = t.warmup_factor * (1 - alpha) + alpha
        return warm * t.gamma ** sum(it >= s for s in steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(i) for i in x) if isinstance(x, (list, tuple)) else x


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------- the trainer
class Trainer:
    def __init__(self, cfg: Config, work_dir: str, device: str = "auto", amp: Optional[bool] = None):
        self.cfg, self.work_dir = cfg, work_dir
        self.device = ddp.local_device(resolve_device(device if device != "auto" else cfg.train.device))
        self.distributed = ddp.setup_distributed(self.device)
        self.main = ddp.is_main()
        use_amp = cfg.train.amp if amp is None else amp
        if use_amp and self.device.type != "cuda":
            self.log_text("notice: --amp needs CUDA; training in fp32 on the CPU")
            use_amp = False
        self.amp_dtype = cfg.train.amp_dtype if use_amp else None
        self.state = State()
        self.stop_signal: Optional[int] = None

    # -------------------------------------------------------------------------------------- logging
    def log_text(self, msg: str) -> None:
        if ddp.is_main():
            tqdm.write(msg)

    def log_json(self, record: dict) -> None:
        if not self.main:
            return
        with open(os.path.join(self.work_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("iter", "epoch"):
                    self.tb.add_scalar(f"{record.get('mode', 'train')}/{k}", v, record.get("iter", 0))

    # ---------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.train.seed + ddp.rank())
        self.train_set = build_dataset(cfg, "train")
        if len(self.train_set.classes) != cfg.model.num_classes:
            raise ConfigError(f"{cfg.source}: model.num_classes={cfg.model.num_classes} but the training data "
                              f"has {len(self.train_set.classes)} classes; set model.num_classes="
                              f"{len(self.train_set.classes)}")
        self.classes = list(self.train_set.classes)
        self.loader = build_dataloader(cfg, "train", self.distributed, dataset=self.train_set)
        self.test_loader = None
        self.iters_per_epoch = len(self.loader)
        model = build_detector(cfg).to(self.device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        total_batch = cfg.data.batch_size * ddp.world_size()
        self.optimizer = build_optimizer(cfg, model, total_batch)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.iters_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == "float16")
        self.ddp_model = (DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda"
                                                  else None, find_unused_parameters=False)
                          if self.distributed else model)
        self.tb = None
        if self.main:
            os.makedirs(self.work_dir, exist_ok=True)
            atomic_write(os.path.join(self.work_dir, "config.py"), lambda f: f.write(cfg.dump().encode()))
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(self.work_dir, "tb"))
            except Exception:  # tensorboard is optional
                self.tb = None
        self.log_text(f"training {cfg.name}: {len(self.train_set)} images, {len(self.classes)} classes, "
                      f"{self.iters_per_epoch} iterations/epoch x {cfg.train.epochs} epochs on {self.device}"
                      f"{' x' + str(ddp.world_size()) if self.distributed else ''}; lr {cfg.train.lr} x total batch "
                      f"{total_batch} = {cfg.train.lr * total_batch:g} (linear scaling)"
                      f"{'; amp ' + self.amp_dtype if self.amp_dtype else ''}")

    # ------------------------------------------------------------------------------------ checkpoints
    def checkpoint_dict(self) -> dict:
        return {"model": self.model.state_dict(), "config": self.cfg.to_dict(), "classes": self.classes,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.state.epoch, "iteration": self.state.iteration,
                "iter_in_epoch": self.state.iter_in_epoch, "best_map": self.state.best_map,
                "rng": rng_state(), "vggdet_version": 1}

    def save(self, name: str = "latest.pth") -> Optional[str]:
        if not self.main:
            return None
        path = os.path.join(self.work_dir, name)
        ckpt = self.checkpoint_dict()
        save_checkpoint(path, ckpt)
        if name == "latest.pth" and self.cfg.train.keep_last > 0 and self.state.iter_in_epoch == 0:
            save_checkpoint(os.path.join(self.work_dir, f"epoch_{self.state.epoch}.pth"), ckpt)
            for old in sorted(glob.glob(os.path.join(self.work_dir, "epoch_*.pth")),
                              key=lambda p: int(p.rsplit("_", 1)[1][:-4]))[: -self.cfg.train.keep_last]:
                os.unlink(old)
        return path

    def resume(self, path: str) -> None:
        if path == "auto":
            path = os.path.join(self.work_dir, "latest.pth")
            if not os.path.isfile(path):
                self.log_text(f"--resume auto: no {path} yet, starting from scratch")
                return
        ckpt = load_checkpoint(path)
        missing = [k for k in ("optimizer", "scheduler", "epoch", "rng") if k not in ckpt]
        if missing:
            raise CheckpointError(f"{path}: cannot resume from it (no {', '.join(missing)}); "
                                  "it holds weights only — use it for tools/test_det.py or tools/infer.py")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = State(ckpt["epoch"], ckpt["iteration"], ckpt.get("iter_in_epoch", 0), ckpt.get("best_map", -1.0))
        set_rng_state(ckpt["rng"])
        self.log_text(f"resumed from {path}: epoch {self.state.epoch}, iteration {self.state.iteration}")

    # ------------------------------------------------------------------------------------- the loop
    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    def fit(self) -> Optional[dict]:
        cfg = self.cfg
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        metrics = None
        try:
            while self.state.epoch < cfg.train.epochs and not self._done():
                self.train_epoch()
                if self.stop_signal is not None:
                    break
                if self._done() and self.state.iter_in_epoch:  # max_iters reached mid-epoch
                    break
                self.state.epoch += 1
                self.state.iter_in_epoch = 0
                last = self.state.epoch >= cfg.train.epochs
                if cfg.train.eval_interval and self.state.epoch % cfg.train.eval_interval == 0 and not last:
                    metrics = self.evaluate()
                if self.state.epoch % max(1, cfg.train.checkpoint_interval) == 0 or last:
                    self.save()
            if self.stop_signal is not None:
                raise Interrupted(self.stop_signal, self.save())
            if self.state.iter_in_epoch:
                self.save()
            metrics = self.evaluate(final=True)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return metrics

    def _done(self) -> bool:
        m = self.cfg.train.max_iters
        return m is not None and self.state.iteration >= m

    def train_epoch(self) -> None:
        cfg, st = self.cfg, self.state
        self.ddp_model.train()
        skip = st.iter_in_epoch  # resuming mid-epoch: the same order, continue after the done batches
        self.loader.set_epoch(st.epoch, start_batch=skip)
        total = self.iters_per_epoch
        bar = tqdm(total=total, initial=skip, desc=f"epoch {st.epoch + 1}/{cfg.train.epochs}", unit="it",
                   disable=not self.main, dynamic_ncols=True)
        window: dict = {}
        t0, n_img = time.perf_counter(), 0
        for i, (images, targets) in enumerate(self.loader, start=skip):
            losses = self.step(images, targets)
            st.iteration += 1
            st.iter_in_epoch = i + 1
            n_img += len(images) * ddp.world_size()
            for k, v in losses.items():
                window[k] = window.get(k, 0.0) + v
            count = st.iter_in_epoch - skip
            rate = n_img / (time.perf_counter() - t0)
            lr = self.optimizer.param_groups[0]["lr"]
            bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in losses.items()} | {
                "lr": f"{lr:.2e}", "img/s": f"{rate:.1f}"})
            bar.update(1)
            if count % cfg.train.log_interval == 0 or st.iter_in_epoch == total:
                n = count % cfg.train.log_interval or cfg.train.log_interval
                rec = {k: v / n for k, v in window.items()}
                self.log_json({"mode": "train", "epoch": st.epoch + 1, "iter": st.iteration, "lr": lr,
                               "loss": sum(rec.values()), **rec, "img_per_s": rate})
                window = {}
            if self.stop_signal is not None or self._done():
                break
        bar.close()

    def step(self, images: list, targets: list) -> dict:
        """One SGD step; returns the loss terms as floats. Stops on NaN/inf, reports OOM helpfully."""
        dev = self.device
        images = [i.to(dev, non_blocking=True) for i in images]
        targets = [{k: v.to(dev, non_blocking=True) for k, v in t.items() if isinstance(v, torch.Tensor)}
                   for t in targets]
        try:
            with amp_context(dev, self.amp_dtype):
                loss_dict = self.ddp_model(images, targets)
            loss = sum(loss_dict.values())
            values = torch.stack([v.detach().float() for v in loss_dict.values()]).cpu().tolist()
            bad = [k for k, v in zip(loss_dict, values) if not math.isfinite(v)]
            if bad:
                raise TrainingError(f"{bad[0]} is {dict(zip(loss_dict, values))[bad[0]]} at iteration "
                                    f"{self.state.iteration + 1} (epoch {self.state.epoch + 1}); stopped without "
                                    f"saving, the last good checkpoint in {self.work_dir} is untouched; "
                                    "try a lower train.lr or train.clip_grad=10")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.train.clip_grad:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(f"out of GPU memory on {dev} at iteration {self.state.iteration + 1}: try a "
                                f"smaller scale (--set model.input.min_size=480 model.input.max_size=800), "
                                f"data.batch_size=1, or --amp") from None
        return dict(zip(loss_dict, values))

    # ------------------------------------------------------------------------------------- evaluation
    def evaluate(self, final: bool = False) -> Optional[dict]:
        cfg = self.cfg
        if self.test_loader is None:
            self.test_loader = build_dataloader(cfg, "test", self.distributed)
        out_dir = os.path.join(self.work_dir, "results") if final and self.main else None
        metrics = evaluate_model(self.model, self.test_loader, self.device, cfg.test.metric, cfg.test.iou_thresh,
                                 out_dir, self.amp_dtype)
        self.model.train()
        if metrics is None:
            return None
        metrics = {**metrics, "epoch": self.state.epoch, "iter": self.state.iteration}
        self.log_text(f"\nevaluation after epoch {self.state.epoch} ({len(self.test_loader.dataset)} test images)\n"
                      + format_table(metrics))
        self.log_json({"mode": "eval", "epoch": self.state.epoch, "iter": self.state.iteration,
                       "mAP": metrics["mAP"], "per_class": metrics.get("per_class")})
        if metrics["mAP"] > self.state.best_map:
            self.state.best_map = metrics["mAP"]
            save_checkpoint(os.path.join(self.work_dir, "best.pth"), self.checkpoint_dict())
        if final:
            write_json(os.path.join(self.work_dir, "metrics.json"), metrics)
        return metrics


def train(cfg: Config, work_dir: str, resume: Optional[str] = None, device: str = "auto",
          amp: Optional[bool] = None) -> Optional[dict]:
    """Train per `cfg` in `work_dir`; returns the final metrics on rank 0 (None on other ranks).

    Raises Interrupted after saving latest.pth on SIGINT/SIGTERM, TrainingError on NaN loss or OOM.
    """
    check_data(cfg)
    trainer = Trainer(cfg, work_dir, device, amp)
    try:
        trainer.setup()
        if resume:
            trainer.resume(resume)
        return trainer.fit()
    finally:
        if trainer.main and getattr(trainer, "tb", None) is not None:
            trainer.tb.close()
        ddp.cleanup()
