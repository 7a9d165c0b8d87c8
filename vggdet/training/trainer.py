"""The training loop: `Trainer(cfg, work_dir).fit()` — optimiser, LR schedule, AMP, DDP, exact resume.

Each iteration reads like the paper: images -> model -> {loss_rpn_cls, loss_rpn_box, loss_cls, loss_box}
-> sum -> SGD step. Checkpoints belong to vggdet/training/checkpoint.py, logging to vggdet/training/logger.py and
evaluation to vggdet/inference/dataset.py; `fit()` decides what to save and when. `train(cfg, work_dir)` is what
tools/train_det.py calls.
"""
from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vggdet import distributed as ddp
from vggdet.config import Config, ConfigError
from vggdet.data import build_dataloader, build_dataset, check_data
from vggdet.errors import Interrupted, TrainingError
from vggdet.evaluation import format_table
from vggdet.fileio import atomic_write, write_json
from vggdet.inference.dataset import evaluate_predictor
from vggdet.inference.torch_backend import TorchPredictor
from vggdet.model.detector import build_detector
from vggdet.runtime import amp_dtype, autocast, resolve_device
from vggdet.training.checkpoint import CheckpointDir, CheckpointError, load_model_state, make_checkpoint
from vggdet.training.logger import RunLogger


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
    """Everything a run needs, built at construction: data, model, optimiser, schedule, scaler, DDP."""

    def __init__(self, cfg: Config, work_dir: str):
        self.cfg, self.work_dir = cfg, work_dir
        self.device = ddp.local_device(resolve_device(cfg.runtime.device))
        self.distributed = ddp.setup_distributed(self.device)
        self.main = ddp.is_main()
        self.dtype = amp_dtype(cfg.runtime, self.device)
        self.state = State()
        self.stop_signal: Optional[int] = None
        seed_everything(cfg.train.seed + ddp.rank())
        self.train_set = build_dataset(cfg, "train")
        self.classes = list(self.train_set.classes)
        if len(self.classes) != cfg.model.num_classes:
            raise ConfigError(f"{cfg.source}: model.num_classes={cfg.model.num_classes} but the training data "
                              f"has {len(self.classes)} classes; set model.num_classes={len(self.classes)}")
        self.loader = build_dataloader(cfg, "train", self.distributed, dataset=self.train_set)
        self.test_loader = None  # built at the first evaluation
        self.iters_per_epoch = len(self.loader)
        self.model = build_detector(cfg).to(self.device)
        if cfg.runtime.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        total_batch = cfg.data.batch_size * ddp.world_size()
        self.optimizer = build_optimizer(cfg, self.model, total_batch)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.iters_per_epoch)
        # fp16 needs loss scaling; bf16 has fp32's range and does not
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16 and self.device.type == "cuda")
        self.ddp_model = (DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda"
                                                  else None) if self.distributed else self.model)
        if self.main:
            os.makedirs(work_dir, exist_ok=True)
        self.log = RunLogger(work_dir, enabled=self.main)
        self.checkpoints = CheckpointDir(work_dir, cfg.train.keep_last)
        if self.main and self.checkpoints.remove_stale_temp_files():
            self.log.text(f"removed unfinished checkpoint temp files in {work_dir} (a killed run's)")
        amp = f"; amp {str(self.dtype).replace('torch.', '')}" if self.dtype else ""
        self.log.text(f"training {cfg.name}: {len(self.train_set)} images, {len(self.classes)} classes, "
                      f"{self.iters_per_epoch} iterations/epoch x {cfg.train.epochs} epochs on {self.device}"
                      f"{' x' + str(ddp.world_size()) if self.distributed else ''}; lr {cfg.train.lr} x total batch "
                      f"{total_batch} = {cfg.train.lr * total_batch:g} (linear scaling){amp}")

    # ------------------------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> dict:
        training = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(), "rng": rng_state(), **asdict(self.state)}
        return make_checkpoint(self.model, self.cfg, self.classes, training)

    def save_latest(self) -> Optional[str]:
        return self.checkpoints.save_latest(self.checkpoint()) if self.main else None

    def resume(self, resume: str) -> None:
        """Continue from a checkpoint path, or "auto" (latest.pth when there is one). Under torch.distributed
        every rank resumes from the same checkpoint (`_read_for_resume`), on one node or several."""
        path, ckpt = self._read_for_resume(resume)
        if path is None:
            self.log.text(f"--resume auto: no {self.checkpoints.path('latest.pth')} yet, starting from scratch")
            return
        load_model_state(self.model, ckpt["model"], path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = State(ckpt["epoch"], ckpt["iteration"], ckpt.get("iter_in_epoch", 0), ckpt.get("best_map", -1.0))
        set_rng_state(ckpt["rng"])
        self.log.text(f"resumed from {path}: epoch {self.state.epoch}, iteration {self.state.iteration}")
        best = self.checkpoints.best_map() if self.main else -1.0
        if best > self.state.best_map:  # resumed from an older epoch_N.pth: best.pth only moves to a better model
            own = f"{self.state.best_map:.4f}" if self.state.best_map >= 0 else "none"
            self.log.text(f"{self.checkpoints.path('best.pth')} holds mAP {best:.4f}, better than this checkpoint's "
                          f"best so far ({own}); only a better evaluation replaces it")
            self.state.best_map = best

    def _read_for_resume(self, resume: str) -> tuple:
        """(path, checkpoint), the same on every rank; (None, None) when "auto" finds no latest.pth.

        One process per node reads the file where it is (its own work_dir's latest.pth, or PATH); the newest
        copy found (most iterations, then the lowest rank) is sent to every rank. So the nodes of a multi-node
        run need no shared filesystem, and they agree even when torchrun's c10d rendezvous makes another node
        global rank 0 (the one that writes checkpoints) than last time. An unreadable file on one node is
        used only when no node has a readable one: then every rank raises its error."""
        path, ckpt, error = None, None, None
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            try:
                path = self.checkpoints.resume_path(resume)
                if path is not None and (not self.distributed or os.path.isfile(path)):
                    ckpt = self.checkpoints.load_for_resume(path)
            except CheckpointError as e:
                error = e
        if not self.distributed:
            if error is not None:
                raise error
            return path, ckpt
        found = ddp.all_gather((ckpt["iteration"] if ckpt is not None else -1, error))
        src = max(range(len(found)), key=lambda r: (found[r][0], -r))
        if found[src][0] < 0:  # no rank has a readable checkpoint
            errors = [e for _, e in found if e is not None]
            if errors:
                raise errors[0]
            if resume != "auto":
                raise CheckpointError(f"checkpoint not found: {resume} (on no node)")
            return None, None
        return ddp.broadcast((path, ckpt) if ddp.rank() == src else None, src=src)

    # ------------------------------------------------------------------------------------- the loop
    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    def fit(self) -> Optional[dict]:
        """Train to `train.epochs`, evaluating every `train.eval_interval` epochs and at the end.

        Writes latest.pth / epoch_N.pth per `train.checkpoint_interval`, best.pth on a new best mAP, and
        metrics.json with the results files (results/) after the final evaluation. Returns the final
        metrics on rank 0. SIGINT / SIGTERM save latest.pth and raise Interrupted.
        """
        cfg = self.cfg
        # signal handlers exist only in the main thread; Ray Train runs this loop in another (and stops it itself)
        caught = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
        old = {s: signal.signal(s, self._on_signal) for s in caught}
        try:
            while self.state.epoch < cfg.train.epochs and not self._done():
                self.train_epoch()
                if self.stop_signal is not None:
                    break
                if self._done() and self.state.iter_in_epoch:  # max_iters reached mid-epoch
                    break
                self.state.epoch += 1
                self.state.iter_in_epoch = 0
                if self.state.epoch >= cfg.train.epochs or self._done():
                    break  # the final evaluation, then the checkpoint, follow the loop
                if cfg.train.eval_interval and self.state.epoch % cfg.train.eval_interval == 0:
                    self._keep_best(self.evaluate())
                if self.state.epoch % max(1, cfg.train.checkpoint_interval) == 0:
                    self.save_latest()
            if self.stop_signal is not None:
                raise Interrupted(self.stop_signal, self.save_latest())
            return self._final_evaluation()
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _final_evaluation(self) -> Optional[dict]:
        """Evaluate, then save latest.pth, so that it (and epoch_N.pth) carries the best mAP including this
        evaluation: a resumed run compares its evaluations with that, and best.pth only moves to a better one.
        A failed evaluation still saves the trained weights first."""
        try:
            metrics = self.evaluate(os.path.join(self.work_dir, "results"))
        except BaseException:
            self.save_latest()
            raise
        new_best = metrics is not None and metrics["mAP"] > self.state.best_map
        if new_best:
            self.state.best_map = metrics["mAP"]
        self.save_latest()  # the resume point first, should best.pth fail to write (a full disk)
        if new_best:
            self.checkpoints.save_best(self.checkpoint())
        if metrics is not None:
            write_json(os.path.join(self.work_dir, "metrics.json"), metrics)
        return metrics

    def _done(self) -> bool:
        m = self.cfg.train.max_iters
        return m is not None and self.state.iteration >= m

    def _keep_best(self, metrics: Optional[dict]) -> None:
        if metrics is not None and metrics["mAP"] > self.state.best_map:
            self.state.best_map = metrics["mAP"]
            self.checkpoints.save_best(self.checkpoint())

    def train_epoch(self) -> None:
        cfg, st = self.cfg, self.state
        self.ddp_model.train()
        skip = st.iter_in_epoch  # resuming mid-epoch: the same order, continue after the done batches
        self.loader.set_epoch(st.epoch, start_batch=skip)
        total = self.iters_per_epoch
        bar = tqdm(total=total, initial=skip, desc=f"epoch {st.epoch + 1}/{cfg.train.epochs}", unit="it",
                   disable=not self.main, dynamic_ncols=True)
        window: dict = {}  # loss sums since the last log record
        t0, n_img = time.perf_counter(), 0
        try:  # the bar ends its line even when a batch fails, so an error starts on a line of its own
            for i, (images, targets) in enumerate(self.loader, start=skip):
                losses = self.step(images, targets)
                st.iteration += 1
                st.iter_in_epoch = i + 1
                n_img += len(images) * ddp.world_size()
                for k, v in losses.items():
                    window[k] = window.get(k, 0.0) + v
                lr, rate = self.optimizer.param_groups[0]["lr"], n_img / (time.perf_counter() - t0)
                bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in losses.items()} | {
                    "lr": f"{lr:.2e}", "img/s": f"{rate:.1f}"})
                bar.update(1)
                count = st.iter_in_epoch - skip
                if count % cfg.train.log_interval == 0 or st.iter_in_epoch == total:
                    self._log_window(window, count % cfg.train.log_interval or cfg.train.log_interval, lr, rate)
                    window = {}
                if self.stop_signal is not None or self._done():
                    break
        except RuntimeError as e:  # the loader's SIGCHLD handler raises wherever the main thread is
            if "DataLoader worker" not in str(e):
                raise
            raise TrainingError(f"{str(e).strip().splitlines()[0]} at iteration {st.iteration + 1} (epoch "
                                f"{st.epoch + 1}); killed or out of memory? the last checkpoint in {self.work_dir} "
                                "is intact: continue with --resume auto") from None
        finally:
            bar.close()

    def _log_window(self, window: dict, n: int, lr: float, rate: float) -> None:
        """One log.jsonl record: each loss term averaged over the last `n` iterations."""
        rec = {k: v / n for k, v in window.items()}
        self.log.record({"mode": "train", "epoch": self.state.epoch + 1, "iter": self.state.iteration, "lr": lr,
                         "loss": sum(rec.values()), **rec, "img_per_s": rate})

    def step(self, images: list, targets: list) -> dict:
        """One SGD step; returns the loss terms as floats. Stops on NaN/inf, reports OOM helpfully."""
        dev = self.device
        images = [i.to(dev, non_blocking=True) for i in images]
        targets = [{k: v.to(dev, non_blocking=True) for k, v in t.items() if isinstance(v, torch.Tensor)}
                   for t in targets]
        try:
            with autocast(dev, self.dtype):
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
    def evaluate(self, results_dir: Optional[str] = None) -> Optional[dict]:
        """mAP on the test split (rank 0; None on other ranks), logged; writes nothing but `results_dir`.

        The model runs through the PyTorch predictor (as tools/test_det.py runs it) in the training's
        precision and without test-time augmentation; the predictor's Winograd conversion is undone after.
        The metrics name the epoch the model is in and the iteration; "iter_in_epoch" is there when the
        run stopped mid-epoch (train.max_iters). Training's random state is left as it was, so a run
        resumed from a checkpoint saved after an evaluation goes on exactly as the uninterrupted one.
        """
        cfg, st = self.cfg, self.state
        if self.test_loader is None:
            self.test_loader = build_dataloader(cfg, "test", self.distributed)
        rng = rng_state()  # the test loader draws its seed from torch's generator
        try:
            with TorchPredictor(self.model, self.classes, self.device, cfg, dtype=self.dtype, tta=False) as p:
                result = evaluate_predictor(p, self.test_loader, results_dir if self.main else None)
        finally:
            set_rng_state(rng)
            self.model.train()
        if result is None:
            return None
        where = {"epoch": st.epoch, "iter": st.iteration}
        when = f"after epoch {st.epoch}"
        if st.iter_in_epoch:  # stopped mid-epoch: the model is in epoch st.epoch + 1
            where = {"epoch": st.epoch + 1, "iter": st.iteration, "iter_in_epoch": st.iter_in_epoch}
            when = (f"after iteration {st.iteration} (mid-epoch {st.epoch + 1}: {st.iter_in_epoch} of "
                    f"{self.iters_per_epoch} iterations; train.max_iters={cfg.train.max_iters})")
        metrics = {**result.metrics, **where}
        self.log.text(f"\nevaluation {when} ({len(self.test_loader.dataset)} test images)\n" + format_table(metrics))
        self.log.record({"mode": "eval", **where, "mAP": metrics["mAP"], "per_class": metrics.get("per_class")})
        return metrics


def train(cfg: Config, work_dir: str, resume: Optional[str] = None) -> Optional[dict]:
    """Train per `cfg` in `work_dir` (the resolved config goes to work_dir/config.py first); returns the
    final metrics on rank 0 (None on other ranks). Device and AMP come from `cfg.runtime`.

    Raises Interrupted after saving latest.pth on SIGINT/SIGTERM, TrainingError on NaN loss or OOM.
    """
    check_data(cfg)
    trainer = None
    try:
        trainer = Trainer(cfg, work_dir)
        if trainer.main:
            atomic_write(os.path.join(work_dir, "config.py"), lambda f: f.write(cfg.dump().encode()))
        if resume:
            trainer.resume(resume)
        return trainer.fit()
    finally:
        if trainer is not None:
            trainer.log.close()
        ddp.cleanup()
