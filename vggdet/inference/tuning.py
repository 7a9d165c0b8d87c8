"""The Winograd timing cache: which 3x3 convs run by Winograd on this machine, measured once and kept.

The gain of Winograd F(4x4,3x3) (vggdet/model/winograd.py) over oneDNN depends on the CPU: the old fixed
width rule (`winograd.eligible`, >= 64 in and >= 128 out channels) was tuned on an AMD EPYC (AVX2), while
on an Intel Xeon (AVX-512) conv1_2 (64 -> 64) was reported 1.17x faster by Winograd. So, like cuDNN's
benchmark mode, the first time a converted conv sees an input of a new kind, `decide` runs both paths on
it (TUNE_WARMUP + TUNE_RUNS calls each, median) and keeps the faster, in memory and in a JSON file,
`cache_path()`: $VGGDET_CACHE_DIR/winograd.json, else $XDG_CACHE_HOME/vggdet/ or ~/.cache/vggdet/. The
key (`tune_key`) is the CPU model, torch version, thread count, in/out channels, batch, memory format and
H*W in half-octave buckets, so VOC's 600x800 .. 600x1000 images share decisions. Delete the file to measure
again (e.g. after tuning on a busy machine: near-ties within ~5% can go either way, which then costs at
most that). An unreadable file is ignored with one warning and rewritten; an unwritable folder keeps the
decisions in memory (one warning). Off switch: `runtime.winograd_tune=false`: the fixed rule, no timing,
no file access.

This lives with the predictor, not the model: `model.eval()` is plain PyTorch; running a model for
inference (vggdet/inference/torch_backend.py) is what converts it (`convert_for_inference`) and times.
Tuning cost, measured 2026-11-29 (AMD EPYC, 2 cores, full-size VGG16, one 600x800 image): the first
forward with an empty cache takes 10.8 s instead of 2.7 s (8 distinct conv keys timed), later forwards
1.9 s either way; a fresh process with the file in place pays nothing extra.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from vggdet.fileio import atomic_path
from vggdet.model import winograd
from vggdet.runtime import cpu_model as cpu_name  # a module name of its own: tests swap it

__all__ = ["convert_for_inference", "decide", "cache_path", "tune_key", "reset_tuning", "wants_winograd"]

TUNE_WARMUP, TUNE_RUNS = 1, 3  # calls per path when a decision is measured: warm-up, then timed (median)
_clock = time.perf_counter  # the tuner's timer (tests replace it with a virtual one)


def wants_winograd(runtime, device: torch.device) -> bool:
    """`runtime.winograd`: True = convert, False = never, None = for inference on the CPU."""
    return runtime.winograd is True or (runtime.winograd is None and torch.device(device).type == "cpu")


def convert_for_inference(model: nn.Module, runtime, device: torch.device) -> int:
    """Convert `model`'s 3x3 convs to Winograd when `runtime` says so, choosing per conv and input by the
    timing cache (`runtime.winograd_tune`) or by the fixed rule; returns how many were converted."""
    if not wants_winograd(runtime, device):
        return 0
    return winograd.convert(model, choose=decide if runtime.winograd_tune else None)


def cache_path() -> str:
    """The decisions file: $VGGDET_CACHE_DIR/winograd.json, else $XDG_CACHE_HOME/vggdet/winograd.json,
    else ~/.cache/vggdet/winograd.json (read at each use, so a changed variable takes effect)."""
    folder = os.environ.get("VGGDET_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "vggdet")
    return os.path.join(folder, "winograd.json")


def tune_key(conv: nn.Conv2d, x: Tensor) -> str:
    """What a decision depends on: CPU model, torch version, threads, channels, batch, memory format and
    the area H*W in half-octave buckets: round(2 log2(H*W)) / 2, so sizes within 2^0.25 = 1.19x in area
    share one (VOC's 600x800 .. 600x1000 inputs are all 2^19; each pooling then takes 2 off the exponent)."""
    n, _, h, w = x.shape
    bucket = round(math.log2(max(h * w, 1)) * 2) / 2
    layout = "channels_last" if x.is_contiguous(memory_format=torch.channels_last) else "nchw"
    return (f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
            f"{conv.in_channels}->{conv.out_channels} | batch {n} | HW 2^{bucket:g} | {layout}")


class _Decisions:
    """The decisions of one cache file, key -> {"winograd": bool, "onednn_s", "winograd_s"}: read at
    the first look-up, written (merged with what other processes wrote meanwhile) after each new one."""

    def __init__(self, path: str):
        self.path, self.entries, self.warned = path, None, set()

    def get(self, key: str) -> Optional[dict]:
        if self.entries is None:
            self.entries = self._read(warn=True)
        return self.entries.get(key)

    def put(self, key: str, entry: dict) -> None:
        self.entries = {**self._read(warn=False), **(self.entries or {}), key: entry}
        text = json.dumps({"version": 1, "decisions": self.entries}, indent=1, sort_keys=True)
        try:  # no fsync: a lost file only costs timing again
            with atomic_path(self.path) as tmp, open(tmp, "w") as f:
                f.write(text)
        except OSError as e:
            self._warn("write", f"cannot write the Winograd tuning cache {self.path} ({e.strerror or e}): "
                                "decisions are kept in memory only (set VGGDET_CACHE_DIR)")

    def _read(self, warn: bool) -> dict:
        try:
            with open(self.path) as f:
                entries = json.load(f)["decisions"]
            if not all(isinstance(e, dict) and isinstance(e.get("winograd"), bool) for e in entries.values()):
                raise ValueError("an entry without a true/false 'winograd'")
            return entries
        except (FileNotFoundError, NotADirectoryError):  # no file yet (or an impossible folder: `put` says so)
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            if warn:
                self._warn("read", f"ignoring the unreadable Winograd tuning cache {self.path} "
                                   f"({type(e).__name__}: {e}); it will be rewritten")
            return {}

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self.warned:  # once per file and kind: the first forward would repeat it per conv
            self.warned.add(kind)
            warnings.warn(message, RuntimeWarning, stacklevel=4)


_DECISIONS: dict = {}  # cache path -> _Decisions: one process-wide memory, like cuDNN's benchmark cache


def reset_tuning() -> None:
    """Forget the decisions held in memory (the file stays): the next look-up reads the file again."""
    _DECISIONS.clear()


def decide(conv: nn.Conv2d, x: Tensor) -> tuple:
    """(use Winograd, output): whether `conv3x3` beats `onednn` for `conv` on inputs like `x` here.

    The decision is looked up by `tune_key` in memory, then in the cache file; on a miss both paths
    run on `x` (TUNE_WARMUP + TUNE_RUNS calls each, alternating, median seconds), the faster wins and
    is stored, and its output conv(x) (+ReLU) comes back so the call is not repeated; else None.
    """
    path = cache_path()
    decisions = _DECISIONS.setdefault(path, _Decisions(path))
    key = tune_key(conv, x)
    entry = decisions.get(key)
    if entry is not None:
        return entry["winograd"], None
    relu, inplace = getattr(conv, "relu", False), getattr(conv, "relu_inplace", False)
    paths = {"onednn": lambda: winograd.onednn(x, conv, relu, inplace), "winograd": lambda: winograd.conv3x3(x, conv, relu=relu)}
    times: dict = {name: [] for name in paths}
    outputs: dict = {}
    for r in range(TUNE_WARMUP + TUNE_RUNS):
        for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):  # alternate: drift hits both alike
            t0 = _clock()
            outputs[name] = paths[name]()
            if r >= TUNE_WARMUP:
                times[name].append(_clock() - t0)
    t_one, t_win = statistics.median(times["onednn"]), statistics.median(times["winograd"])
    fast = t_win < t_one
    decisions.put(key, {"winograd": fast, "onednn_s": round(t_one, 6), "winograd_s": round(t_win, 6)})
    if not fast:
        conv.__dict__.pop("_winograd_cache", None)  # oneDNN runs here: don't hold 4x the weights for nothing
    return fast, outputs["winograd" if fast else "onednn"]
