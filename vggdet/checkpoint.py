"""Checkpoints: plain dicts of tensors and Python values, safe for `torch.load(weights_only=True)`.

`{"model": state_dict, "config": cfg.to_dict(), "classes": [...], ...}`; training adds optimizer,
scheduler, scaler, epoch/iteration and RNG states. Writes are atomic: a temp file in the same folder,
fsync, then os.replace, so a kill mid-save never leaves a torn file under the final name.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from vggdet.config import Config, apply_overrides, load_config
from vggdet.fileio import atomic_write


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def save_checkpoint(path: str, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a vggdet checkpoint (expected a dict)")
    if "model" not in ckpt:  # a bare state_dict
        ckpt = {"model": ckpt}
    return ckpt


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
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model config (missing {list(missing)[:3]}, "
                              f"unexpected {list(unexpected)[:3]}); wrong CONFIG or num_classes?")
