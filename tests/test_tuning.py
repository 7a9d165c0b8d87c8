"""The CPU kernel timing cache (vggdet/inference/tuning.py): the per-conv choice among the CPU kernels
(prepacked oneDNN, Winograd) is measured once per machine and input size, cached in a JSON file unless the
machine was busy, and can be switched off (the fixed width rule).

Timing noise never decides a test: the tuner's clock is virtual here, advanced only by the kernels'
wrappers (a real sleep is not enough: on a busy 2-core machine a tiny conv can take 80 ms).
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from vggdet import build_detector, load_config
from vggdet.inference import tuning
from vggdet.inference.torch_backend import TorchPredictor
from vggdet.model import cpu_kernels

KERNELS = ("prepack", "winograd")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty cache folder, no decisions in memory, a virtual tuner clock (see `counting`) and an idle
    machine (load average 0); returns the cache file's path."""
    monkeypatch.setenv("VGGDET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tuning, "_clock", lambda: NOW[0])
    monkeypatch.setattr(tuning, "_load", lambda: 0.0)
    tuning.reset_tuning()
    yield tmp_path / "cache" / "winograd.json"
    tuning.reset_tuning()


NOW = [0.0]  # the virtual clock: seconds advanced only by `counting` wrappers


def counting(monkeypatch, name: str, cost: float = 0.001) -> list:
    """Wrap the CPU kernel `name` (cpu_kernels.KERNELS) so that it records its calls and advances the virtual
    clock by `cost` seconds per call."""
    calls = []
    mode, usable, run = cpu_kernels.KERNELS[name]

    def wrapper(conv, x, relu):
        calls.append(tuple(x.shape))
        NOW[0] += cost
        return run(conv, x, relu)
    monkeypatch.setitem(cpu_kernels.KERNELS, name, (mode, usable, wrapper))
    return calls


def layer() -> cpu_kernels.FastConv2d:
    """A converted 16 -> 32 conv with its ReLU fused, timed by the cache (as the predictor converts)."""
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True))
    assert cpu_kernels.convert(seq, choose=tuning.decide) == 1 and seq[0].relu and seq[0].choose is tuning.decide
    return seq[0]


def reference(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    y = nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    return y.relu() if conv.relu else y


def entries(path) -> dict:
    return json.loads(path.read_text())["decisions"]


@pytest.mark.parametrize("slow", KERNELS)
def test_the_faster_kernel_is_picked_cached_and_computes_the_conv(cache, monkeypatch, slow):
    conv = layer()
    x = torch.randn(2, 16, 12, 12)
    calls = {name: counting(monkeypatch, name, 0.05 if name == slow else 0.01) for name in KERNELS}
    with torch.inference_mode():
        first = conv(x)  # measured: every kernel runs TUNE_WARMUP + TUNE_RUNS times
        assert {n: len(c) for n, c in calls.items()} == {n: tuning.TUNE_WARMUP + tuning.TUNE_RUNS for n in calls}
        second = conv(x)
    winner = "prepack" if slow == "winograd" else "winograd"
    assert len(calls[winner]) == tuning.TUNE_WARMUP + tuning.TUNE_RUNS + 1  # then only the winner runs
    (key, entry), = entries(cache).items()
    assert key.startswith(tuning.tune_key(conv, x)) and key.endswith("| fp32 | prepack,winograd")
    assert entry["kernel"] == winner and entry["s"][slow] > entry["s"][winner] > 0 and entry["load"] == [0, 0]
    # the loser's cache is not kept (Winograd's is 4x the conv's weights)
    assert hasattr(conv, "_winograd_cache") == (winner == "winograd")
    assert hasattr(conv, "_packed") == (winner == "prepack")
    for y in (first, second):  # either way, the conv (+ ReLU) within float32 rounding
        torch.testing.assert_close(y, reference(conv, x), rtol=1e-4, atol=1e-4)


def test_cache_file_is_reused_without_timing_and_keyed_by_machine_threads_and_size(cache, monkeypatch):
    conv = layer()
    x = torch.randn(1, 16, 12, 12)
    with torch.inference_mode():
        conv(x)
        assert cache.is_file() and len(entries(cache)) == 1
        tuning.reset_tuning()  # a fresh process: only the file remembers
        calls = {name: counting(monkeypatch, name) for name in KERNELS}
        y = conv(x)
        assert sum(map(len, calls.values())) == 1  # the cached choice, no timing
        conv(torch.randn(1, 16, 11, 13))  # 143 vs 144 pixels: the same area bucket (2^7)
        assert sum(map(len, calls.values())) == 2 and len(entries(cache)) == 1
        conv(torch.randn(1, 16, 24, 24))  # 4x the area: another bucket, measured again
        assert sum(map(len, calls.values())) > 3 and len(entries(cache)) == 2
        threads = torch.get_num_threads()
        torch.set_num_threads(1 if threads > 1 else 2)
        try:
            conv(x)
        finally:
            torch.set_num_threads(threads)
        monkeypatch.setattr(tuning, "cpu_name", lambda: "Some Other CPU")
        conv(x)
        conv(x.contiguous(memory_format=torch.channels_last))
    keys = list(entries(cache))
    assert len(keys) == 5
    assert sum("Some Other CPU" in k for k in keys) == 2 and sum("channels_last" in k for k in keys) == 1
    assert any(f"{1 if threads > 1 else 2} threads" in k for k in keys)
    assert all(f"torch {torch.__version__}" in k and "16->32" in k and "batch 1" in k for k in keys)
    torch.testing.assert_close(y, reference(conv, x), rtol=1e-4, atol=1e-4)


def test_a_decision_made_on_a_busy_machine_is_used_but_not_written(cache, monkeypatch):
    monkeypatch.setattr(tuning, "_load", lambda: 64.0)  # far more runnable threads than cores
    conv, x = layer(), torch.randn(1, 16, 8, 8)
    with torch.inference_mode():
        y = conv(x)
        calls = {name: counting(monkeypatch, name) for name in KERNELS}
        conv(x)
    assert sum(map(len, calls.values())) == 1  # remembered by this process
    assert not cache.exists()  # but not for the next one
    torch.testing.assert_close(y, reference(conv, x), rtol=1e-4, atol=1e-4)


def test_corrupt_cache_file_warns_once_and_an_old_one_is_replaced_quietly(cache):
    cache.parent.mkdir()
    cache.write_text("{not json")
    conv, x = layer(), torch.randn(1, 16, 8, 8)
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="unreadable CPU kernel timing cache") as w:
        y = conv(x)
        conv(torch.randn(1, 16, 32, 32))
    assert len(w) == 1
    assert len(entries(cache)) == 2  # rewritten as valid JSON with both decisions
    torch.testing.assert_close(y, reference(conv, x), rtol=1e-4, atol=1e-4)
    # a file of 0.1's format (Winograd or oneDNN per key): measured again without a warning, then replaced
    cache.write_text(json.dumps({"version": 1, "decisions": {"k": {"winograd": True}}}))
    tuning.reset_tuning()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error")
        conv(x)
    assert json.loads(cache.read_text())["version"] == tuning.FILE_VERSION and len(entries(cache)) == 1


def test_unwritable_cache_folder_keeps_decisions_in_memory(tmp_path, monkeypatch, cache):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("VGGDET_CACHE_DIR", str(tmp_path / "file" / "cache"))  # below a file: never writable
    conv, x = layer(), torch.randn(1, 16, 8, 8)
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="kept in memory only") as w:
        conv(x)
        conv(torch.randn(1, 16, 32, 32))
    assert len(w) == 1
    calls = {name: counting(monkeypatch, name) for name in KERNELS}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error")
        y = conv(x)  # remembered in memory: one call, no timing, no new warning
    assert sum(map(len, calls.values())) == 1
    assert not (tmp_path / "file").read_text()
    torch.testing.assert_close(y, reference(conv, x), rtol=1e-4, atol=1e-4)


def test_tuning_off_is_the_fixed_rule_without_timing_or_file(cache, monkeypatch):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 128, 3, padding=1), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU())
    x = torch.randn(1, 3, 10, 14)
    ref = seq(x).detach()
    assert cpu_kernels.convert(seq) == 4  # every 3x3 stride-1 conv; conv 3 -> 16 can only be prepacked
    monkeypatch.setattr(tuning, "decide", lambda *a, **k: pytest.fail("tuning is off"))
    wino, packed = counting(monkeypatch, "winograd"), counting(monkeypatch, "prepack")
    with torch.inference_mode():
        torch.testing.assert_close(seq(x), ref, rtol=1e-4, atol=1e-4)
    assert wino == [(1, 128, 10, 14)]  # only 128 -> 128 meets the fixed rule (MIN_IN 64, MIN_OUT 128)
    assert len(packed) == 3
    assert not cache.parent.exists()
    # switched on for the converted modules too (a predictor converting an already converted model)
    assert cpu_kernels.convert(seq, choose=tuning.decide) == 0
    assert all(m.choose is tuning.decide for m in seq if isinstance(m, cpu_kernels.FastConv2d))


def test_runtime_winograd_tune_reaches_the_predictor(cache):
    tiny = ["model.backbone.width=0.25", "model.roi_head.fc_dim=64", "model.num_classes=2"]
    for tune in (False, True):
        cfg = load_config(None, tiny + [f"runtime.winograd_tune={tune}"])
        predictor = TorchPredictor(build_detector(cfg), ["a", "b"], "cpu", cfg)
        convs = [m for m in predictor.model.modules() if isinstance(m, cpu_kernels.FastConv2d)]
        assert len(convs) == 14  # conv1_1..conv5_3 and the RPN conv
        assert all(m.choose is (tuning.decide if tune else None) for m in convs)
        predictor.close()  # plain modules again
        assert not any(isinstance(m, (cpu_kernels.FastConv2d, cpu_kernels.PrepackedLinear))
                       for m in predictor.model.modules())
    assert load_config(None).runtime.winograd_tune is True
