"""Checkpoints, the one owner of their schema: writing, the work folder's rotation, resume, and old files.

A checkpoint is a plain dict, safe for `torch.load(weights_only=True)` (format 2):

    format_version  int, FORMAT_VERSION when written
    model           the model's state_dict
    config          Config.to_dict() (the embedded config: tools need nothing else)
    classes         class names, label k -> classes[k - 1]
    svd             {"fc6": {"rank": r}, ...} after tools/compress_svd.py
    training state  optimizer, scheduler, scaler, epoch, iteration, iter_in_epoch, best_map, rng
                    (training checkpoints only; `weights_only()` drops the optimizer's part)

A bare state_dict loads as {"model": it}. Files written by older versions are upgraded on load by
MIGRATIONS (renamed config keys: the table in vggdet/config.py), so every tool reads them and gives the same
detections (tests/test_checkpoint.py, on a file written before format 2). Writes are atomic: a temp file in
the same folder, fsync, then os.replace, so a kill mid-save never leaves a torn file under the final name.
"""
from __future__ import annotations

import glob
import os
from typing import Callable, Optional

import torch

from vggdet.config import Config, apply_overrides, load_config, migrate_dict
from vggdet.errors import first_line
from vggdet.fileio import atomic_write
from vggdet.model.backbone import VGG_LAYOUTS

__all__ = ["CheckpointError", "FORMAT_VERSION", "TRAINING_KEYS", "make_checkpoint", "save_checkpoint",
           "load_checkpoint", "weights_only", "config_from_checkpoint", "load_model_state", "load_detector",
           "CheckpointDir"]

FORMAT_VERSION = 2
TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "epoch", "iteration", "iter_in_epoch", "best_map", "rng")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def _v1_to_v2(ckpt: dict, path: str) -> dict:
    """Format 1 (vggdet 0.1.0): runtime keys lived in `train` / `test` (see config.RENAMED)."""
    if "config" in ckpt:
        ckpt["config"] = migrate_dict(ckpt["config"], path, warn=False)
    ckpt.pop("vggdet_version", None)
    return ckpt


# version -> the function that upgrades a checkpoint of that version by one step
MIGRATIONS = {1: _v1_to_v2}


def make_checkpoint(model: torch.nn.Module, cfg: Config, classes: list, training: Optional[dict] = None) -> dict:
    """The checkpoint dict for `model`; `training` holds the TRAINING_KEYS of a resumable checkpoint."""
    ckpt = {"format_version": FORMAT_VERSION, "model": model.state_dict(), "config": cfg.to_dict(),
            "classes": list(classes)}
    if training:
        unknown = sorted(set(training) - set(TRAINING_KEYS))
        if unknown:
            raise KeyError(f"not part of the checkpoint schema: {unknown}")
        ckpt.update(training)
    return ckpt


def save_checkpoint(path: str, ckpt: dict) -> None:
    """Write atomically; a failed write (disk full, file too large) leaves any older file under `path` as
    it was and raises one OSError naming the file."""
    try:
        atomic_write(path, lambda f: torch.save(ckpt, f))
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as a RuntimeError
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
        raise OSError(f"{path}: cannot write the checkpoint ({why}); disk full? "
                      "the previous file under that name, if any, is intact") from None


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint (any format version) and upgrade it to FORMAT_VERSION."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:4] != b"PK\x03\x04" and magic[:1] != b"\x80":  # torch.save's zip, or a legacy pickle
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip nor a pickle file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read checkpoint, truncated or corrupt? ({type(e).__name__}: "
                              f"{first_line(e, empty='')})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a vggdet checkpoint (expected a dict)")
    if "model" not in ckpt:  # a bare state_dict
        ckpt = {"model": ckpt}
    version = ckpt.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is newer than this vggdet reads "
                              f"({FORMAT_VERSION}); upgrade vggdet")
    while version < FORMAT_VERSION:
        ckpt = MIGRATIONS[version](ckpt, path)
        version += 1
    ckpt["format_version"] = FORMAT_VERSION
    return ckpt


def weights_only(ckpt: dict) -> dict:
    """A copy without optimizer, scheduler and scaler state, which no longer fit once the weights change
    shape (SVD); epoch and iteration stay as a record of where the weights came from."""
    return {k: v for k, v in ckpt.items() if k not in ("optimizer", "scheduler", "scaler")}


def config_from_checkpoint(ckpt: dict, path: str, config_path: Optional[str] = None,
                           overrides: Optional[list] = None) -> Config:
    """The config file wins when given; else the checkpoint's embedded config (then the overrides)."""
    if config_path is not None:
        return load_config(config_path, overrides)
    if "config" not in ckpt:
        raise CheckpointError(f"{path}: the checkpoint has no embedded config; pass the CONFIG file too")
    cfg = Config.from_dict(ckpt["config"], source=path)
    apply_overrides(cfg, overrides or [])
    return cfg


def load_model_state(model: torch.nn.Module, state: dict, path: str) -> None:
    """Copy `state` into `model`; a mismatch is one line naming the first bad key and the likely cause."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own and hasattr(value, "shape") and value.shape != own[key].shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)} in the checkpoint but "
                                  f"{tuple(own[key].shape)} in the model: {_likely_cause(key, state, own)}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        cause = _backbone_cause(state, own) or "wrong CONFIG, SVD ranks or batch_norm?"
        raise CheckpointError(f"{path}: weights do not fit the model config (missing {list(missing)[:3]}, "
                              f"unexpected {list(unexpected)[:3]}): {cause}")


def _likely_cause(key: str, state: dict, own: dict) -> str:
    if key.startswith(("roi_head.cls_score", "roi_head.bbox_pred")):
        return "another model.num_classes (or a CONFIG that does not belong to this checkpoint)"
    if key.startswith(("roi_head.fc6", "roi_head.fc7")):
        return "another model.roi_head.fc_dim or SVD rank (fc6_rank / fc7_rank)"
    return _backbone_cause(state, own) or ("another model.backbone.width / rpn.conv_channels (or a CONFIG that "
                                           "does not belong to this checkpoint)")


def _backbone_layout(state: dict) -> tuple:
    """(number of conv layers, batch norm?) of the backbone in a detector state_dict."""
    convs = sum(1 for k, v in state.items() if k.startswith("backbone.body.") and k.endswith(".weight")
                and getattr(v, "dim", lambda: 0)() == 4)
    return convs, any(k.startswith("backbone.body.") and k.endswith(".running_mean") for k in state)


def _backbone_cause(state: dict, own: dict) -> Optional[str]:
    """The backbone settings that differ, when the layer shapes say so ("the checkpoint is a VGG16 (13 convs);
    the config says model.backbone.depth=19 (16 convs)", the same for batch_norm) and the values that fit the
    checkpoint; None when depth and batch norm agree."""
    depths = {sum(v != "M" for v in layout): d for d, layout in VGG_LAYOUTS.items()}
    (convs, bn), (own_convs, own_bn) = _backbone_layout(state), _backbone_layout(own)
    said, fits = [], []
    if convs != own_convs and convs in depths and own_convs in depths:
        said.append(f"the checkpoint is a VGG{depths[convs]} ({convs} convs); the config says "
                    f"model.backbone.depth={depths[own_convs]} ({own_convs} convs)")
        fits.append(f"model.backbone.depth={depths[convs]}")
    if bn != own_bn and convs and own_convs:
        said.append(f"the checkpoint's backbone has {'' if bn else 'no '}batch norm layers; the config says "
                    f"model.backbone.batch_norm={own_bn}")
        fits.append(f"model.backbone.batch_norm={bn}")
    return f"{'; '.join(said)} ({' '.join(fits)} fits the checkpoint)" if said else None


def load_detector(path: str, config: Optional[str] = None, overrides: Optional[list] = None,
                  check: Optional[Callable[[Config], None]] = None) -> tuple:
    """(model on the CPU in train mode, Config, class names) from a checkpoint (+ optional CONFIG file).

    `check(cfg)` runs before the model is built (to reject a config by name, not by a weights mismatch).
    """
    from vggdet.model.detector import build_detector

    ckpt = load_checkpoint(path)
    cfg = config_from_checkpoint(ckpt, path, config, overrides)
    if check is not None:
        check(cfg)
    model = build_detector(cfg, load_weights=False)
    load_model_state(model, ckpt["model"], path)
    classes = ckpt.get("classes") or [f"class{i}" for i in range(1, cfg.model.num_classes + 1)]
    return model, cfg, list(classes)


class CheckpointDir:
    """A training run's checkpoints in `work_dir`: latest.pth, best.pth and the last `keep_last` epoch_N.pth."""

    def __init__(self, work_dir: str, keep_last: int):
        self.work_dir, self.keep_last = work_dir, keep_last

    def path(self, name: str) -> str:
        return os.path.join(self.work_dir, name)

    def save_latest(self, ckpt: dict) -> str:
        """latest.pth, and epoch_N.pth (rotated) when the checkpoint ends an epoch."""
        path = self.path("latest.pth")
        save_checkpoint(path, ckpt)
        if self.keep_last > 0 and not ckpt.get("iter_in_epoch"):
            save_checkpoint(self.path(f"epoch_{ckpt['epoch']}.pth"), ckpt)
            epochs = sorted(glob.glob(self.path("epoch_*.pth")), key=_epoch_number)
            for old in epochs[: -self.keep_last]:
                os.unlink(old)
        return path

    def save_best(self, ckpt: dict) -> str:
        save_checkpoint(self.path("best.pth"), ckpt)
        return self.path("best.pth")

    def best_map(self) -> float:
        """The mAP best.pth was saved for (-1 when there is none, or it cannot be read); reads the number
        without loading the weights (mmap)."""
        path = self.path("best.pth")
        if not os.path.isfile(path):
            return -1.0
        try:
            return float(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("best_map", -1.0))
        except Exception:  # a torn or foreign file: resume goes on with the checkpoint's own number
            return -1.0

    def resume_path(self, resume: str) -> Optional[str]:
        """`--resume` value -> the file to resume from; "auto" = latest.pth, None when there is none yet."""
        if resume != "auto":
            return resume
        path = self.path("latest.pth")
        return path if os.path.isfile(path) else None

    def _newest_intact_epoch(self) -> Optional[str]:
        for path in sorted(glob.glob(self.path("epoch_*.pth")), key=_epoch_number, reverse=True):
            try:
                load_checkpoint(path)
                return path
            except CheckpointError:
                continue
        return None

    def remove_stale_temp_files(self) -> int:
        """Delete `.tmp_*.pth` files that a killed run left behind (never read as checkpoints)."""
        stale = glob.glob(self.path(".tmp_*.pth"))
        for path in stale:
            os.unlink(path)
        return len(stale)

    def load_for_resume(self, path: str) -> dict:
        """A checkpoint that holds the training state; a weights-only one is a clear error. An unreadable one
        (a torn copy from another tool, a bad disk) names the newest epoch_N.pth that can be read, so no run
        silently starts again from scratch."""
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            intact = self._newest_intact_epoch()
            hint = f"resume from the newest intact one: --resume {intact}" if intact else "no intact epoch_N.pth"
            raise CheckpointError(f"{e}; {hint}") from None
        missing = [k for k in ("optimizer", "scheduler", "epoch", "rng") if k not in ckpt]
        if missing:
            raise CheckpointError(f"{path}: cannot resume from it (no {', '.join(missing)}); "
                                  "it holds weights only — use it for tools/test_det.py or tools/infer.py")
        return ckpt


def _epoch_number(path: str) -> int:
    return int(path.rsplit("_", 1)[1][:-4])
