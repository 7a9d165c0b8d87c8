"""The CPU kernel timing cache: which kernel runs each conv on this machine, measured once and kept.

Each 3x3 conv can run by several exact CPU kernels (vggdet/model/cpu_kernels.py: the prepacked oneDNN conv,
Winograd F(4x4,3x3); under bf16 autocast the prepacked bf16 conv), and which is fastest depends on the CPU
and the layer: on an AMD EPYC with AVX2 only, Winograd won conv3_1..conv5_3; on one with AVX-512 the
prepacked oneDNN conv won conv1_x..conv2_x and Winograd conv3_x..conv5_3 (docs/benchmarks.md). So, like
cuDNN's benchmark mode, the first time a converted conv sees an input of a new kind, `decide` runs every
usable kernel on it (TUNE_WARMUP + TUNE_RUNS calls each, alternating) and keeps the one with the lowest
*minimum* time (contention only adds time, and it hurts Winograd's many small parallel regions far more
than one oneDNN call, so the minimum is the least disturbed estimate), in memory and in a JSON file,
`cache_path()`: $VGGDET_CACHE_DIR/winograd.json, else $XDG_CACHE_HOME/vggdet/ or ~/.cache/vggdet/. A
decision measured while the machine was busy (1-minute load average above its cores + 0.5) is used by this process
but not written: a busy first run must not fix a bad choice for every later one. The key (`tune_key`) is
the CPU model, torch version, thread count, in/out channels, batch, memory format, H*W in half-octave
buckets (VOC's 600x800 .. 600x1000 images share decisions), the mode and the kernels compared. Delete the
file to measure again. An unreadable file is ignored with one warning and rewritten (a file of the older,
Winograd-or-oneDNN format is replaced without one); an unwritable folder keeps the decisions in memory
(one warning). Off switch: `runtime.winograd_tune=false`: the fixed rule (`cpu_kernels.fixed_choice`), no
timing, no file access.

This lives with the predictor, not the model: `model.eval()` is plain PyTorch; running a model for
inference (vggdet/inference/torch_backend.py) is what converts it (`convert_for_inference`) and times.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from vggdet.fileio import atomic_path
from vggdet.model import cpu_kernels
from vggdet.runtime import cpu_model as cpu_name  # a module name of its own: tests swap it

__all__ = ["convert_for_inference", "decide", "cache_path", "tune_key", "reset_tuning", "wants_cpu_kernels"]

TUNE_WARMUP, TUNE_RUNS = 1, 3  # calls per kernel when a decision is measured: warm-up, then timed (minimum)
FILE_VERSION = 2  # 1: {"winograd": bool} per key (Winograd or the plain conv)
_clock = time.perf_counter  # the tuner's timer (tests replace it with a virtual one)


def wants_cpu_kernels(runtime, device: torch.device) -> bool:
    """`runtime.winograd` (the switch of every CPU kernel, named after the first): True = convert, False =
    never, None = for inference on the CPU."""
    return runtime.winograd is True or (runtime.winograd is None and torch.device(device).type == "cpu")


def convert_for_inference(model: nn.Module, runtime, device: torch.device) -> int:
    """Convert `model`'s 3x3 convs and head layers to the CPU kernels when `runtime` says so, choosing per conv
    and input by the timing cache (`runtime.winograd_tune`) or by the fixed rule; returns how many convs."""
    if not wants_cpu_kernels(runtime, device):
        return 0
    return cpu_kernels.convert(model, choose=decide if runtime.winograd_tune else None)


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
    """The decisions of one cache file, key -> {"kernel": name, "s": {name: min seconds}, "load": [..]}: read
    at the first look-up, written (merged with what other processes wrote meanwhile) after each new one."""

    def __init__(self, path: str):
        self.path, self.entries, self.warned = path, None, set()

    def get(self, key: str) -> Optional[dict]:
        if self.entries is None:
            self.entries = self._read(warn=True)
        return self.entries.get(key)

    def put(self, key: str, entry: dict, persist: bool = True) -> None:
        if not persist:  # this process only
            self.entries = {**(self.entries or {}), key: entry}
            return
        self.entries = {**self._read(warn=False), **(self.entries or {}), key: entry}
        text = json.dumps({"version": FILE_VERSION, "decisions": self.entries}, indent=1, sort_keys=True)
        try:  # no fsync: a lost file only costs timing again
            with atomic_path(self.path) as tmp, open(tmp, "w") as f:
                f.write(text)
        except OSError as e:
            self._warn("write", f"cannot write the CPU kernel timing cache {self.path} ({e.strerror or e}): "
                                "decisions are kept in memory only (set VGGDET_CACHE_DIR)")

    def _read(self, warn: bool) -> dict:
        try:
            with open(self.path) as f:
                data = json.load(f)
            if data.get("version") != FILE_VERSION:
                return {}  # the older Winograd-or-oneDNN decisions: measured again, then replaced
            entries = data["decisions"]
            if not all(isinstance(e, dict) and e.get("kernel") in cpu_kernels.KERNELS for e in entries.values()):
                raise ValueError("an entry without a known 'kernel'")
            return entries
        except (FileNotFoundError, NotADirectoryError):  # no file yet (or an impossible folder: `put` says so)
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            if warn:
                self._warn("read", f"ignoring the unreadable CPU kernel timing cache {self.path} "
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


def decide(conv: nn.Conv2d, x: Tensor, names: tuple) -> tuple:
    """(kernel name, output): which of the kernels `names` runs `conv` fastest on inputs like `x` here.

    Looked up by `tune_key` + the kernels in memory, then in the cache file; on a miss every kernel runs on
    `x` (TUNE_WARMUP + TUNE_RUNS calls each, alternating), the lowest minimum wins and is stored (in the file
    only when the machine was not busy), the losers' caches are freed, and the winner's output conv(x)
    (+ReLU) comes back so the call is not repeated; on a hit the output is None.
    """
    path = cache_path()
    decisions = _DECISIONS.setdefault(path, _Decisions(path))
    key = f"{tune_key(conv, x)} | {cpu_kernels.mode_of(x)} | {','.join(sorted(names))}"
    entry = decisions.get(key)
    if entry is not None and entry["kernel"] in names:
        return entry["kernel"], None
    relu = getattr(conv, "relu", False)
    load = [_load()]
    times: dict = {name: [] for name in names}
    outputs: dict = {}
    for r in range(TUNE_WARMUP + TUNE_RUNS):
        for name in (names if r % 2 == 0 else names[::-1]):  # alternate: drift hits all alike
            t0 = _clock()
            outputs[name] = cpu_kernels.run_kernel(name, conv, x, relu)
            if r >= TUNE_WARMUP:
                times[name].append(_clock() - t0)
    load.append(_load())
    best = min(names, key=lambda n: min(times[n]))
    busy = max(load) > (os.cpu_count() or 1) + 0.5
    decisions.put(key, {"kernel": best, "s": {n: round(min(t), 6) for n, t in times.items()},
                        "load": [round(v, 2) for v in load]}, persist=not busy)
    cpu_kernels.free_unused(conv, best)
    return best, outputs[best]


def _load() -> float:
    """The 1-minute load average (0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
