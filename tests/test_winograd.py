"""The CPU inference kernels (vggdet/model/cpu_kernels.py: prepacked oneDNN convs and fc layers, Winograd
F(4x4,3x3) of vggdet/model/winograd.py): exact to float32 rounding, a conversion of the model that the
predictor applies (never `model.eval()`), and detections equal to the plain path's.

VGGDET_TEST_DEVICE=cuda runs the device tests on the GPU (benchmarks/gpu_check.sh does); default cpu.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from vggdet import build_detector, load_config
from vggdet.config import RuntimeConfig
from vggdet.inference.torch_backend import TorchPredictor
from vggdet.inference.tuning import convert_for_inference
from vggdet.model import cpu_kernels, winograd

DEVICE = os.environ.get("VGGDET_TEST_DEVICE", "cpu")
if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip("VGGDET_TEST_DEVICE=cuda but CUDA is not available", allow_module_level=True)

# A small model whose detections are many and well separated: 2 classes (uniform-ish softmax > 0.05).
SMALL = ["model.backbone.width=0.25", "model.backbone.freeze_at=0", "model.roi_head.fc_dim=256",
         "model.num_classes=2", "model.input.min_size=192", "model.input.max_size=320",
         "model.rpn.min_size=4", "model.rpn.pre_nms_top_n_test=1000", "model.rpn.post_nms_top_n_test=100"]


def small_model(*extra: str):
    torch.manual_seed(0)
    return build_detector(load_config(None, SMALL + list(extra))).to(DEVICE).eval()


def images(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g).to(DEVICE) for h, w in ((150, 200), (190, 130))]


def detect(model, imgs, fast, dtype=None):
    """fast: True/False force the CPU fast path (channels_last + Winograd) on/off; None = auto (what the
    predictor does: Winograd for CPU inference, each conv's path timed once)."""
    model.channels_last = fast
    cpu_kernels.revert(model)
    convert_for_inference(model, RuntimeConfig(winograd=fast), torch.device(DEVICE))
    with torch.inference_mode(), torch.autocast(torch.device(DEVICE).type, dtype=dtype or torch.float32,
                                                enabled=dtype is not None):
        return model(imgs)


def assert_same_detections(a: list, b: list, rtol: float = 1e-3):
    assert len(a) == len(b) and sum(len(d["boxes"]) for d in b) > 0
    for da, db in zip(a, b):
        assert da["labels"].tolist() == db["labels"].tolist()
        torch.testing.assert_close(da["boxes"], db["boxes"], rtol=rtol, atol=rtol)
        torch.testing.assert_close(da["scores"], db["scores"], rtol=rtol, atol=1e-4)


def test_fast_path_detections_equal_plain_path():
    model = small_model()
    imgs = images()
    plain = detect(model, imgs, fast=False)
    fast = detect(model, imgs, fast=True)  # what the default (None = auto) picks on CPU
    assert sum(len(d["boxes"]) for d in plain) > 10
    assert_same_detections(fast, plain)
    auto = detect(model, imgs, fast=None)
    assert_same_detections(auto, plain)
    assert bool(converted(model)) == (DEVICE == "cpu")  # auto: CPU inference only


def test_full_width_backbone_fast_paths_match():
    torch.manual_seed(0)
    model = build_detector(load_config(None, ["model.input.min_size=96"])).to(DEVICE).eval()
    x = torch.rand(1, 3, 96, 136, device=DEVICE)
    with torch.inference_mode():
        plain = model.backbone(x)
        tol = dict(rtol=1e-3, atol=1e-3 * plain.abs().max().item())
        torch.testing.assert_close(model.backbone(x.contiguous(memory_format=torch.channels_last)), plain, **tol)
        if DEVICE == "cpu":
            assert cpu_kernels.convert(model.backbone) == 13  # conv1_1..conv5_3
            torch.testing.assert_close(model.backbone(x), plain, **tol)


# ------------------------------------------------------------------------------------------ Winograd
# SMALL (width 0.25): every 3x3 conv but conv1_1 (3 input channels) is converted and fuses the ReLU after
# it; the RPN conv (128 -> 512) without a fused ReLU (RPN.forward applies F.relu). Name -> fused ReLU.
SMALL_CONVERTED = {f"backbone.body.{i}": True for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)}
SMALL_CONVERTED["rpn.conv"] = False
# Without the timing cache, the fixed rule runs Winograd on conv4_1 (64 -> 128) and conv4_2..conv5_3 (128 -> 128),
# which reach MIN_IN / MIN_OUT, and the RPN conv; conv1_2..conv3_x are too narrow.
SMALL_WINOGRAD = {"backbone.body.17": True, "backbone.body.19": True, "backbone.body.21": True,
                  "backbone.body.24": True, "backbone.body.26": True, "backbone.body.28": True, "rpn.conv": False}


def converted(model: nn.Module) -> dict:
    """Name -> fused ReLU of every WinogradConv2d in `model`."""
    return {name: m.relu for name, m in model.named_modules() if isinstance(m, cpu_kernels.FastConv2d)}


def count_winograd_calls(monkeypatch) -> list:
    """Record (conv module, relu) for every `winograd.conv3x3` call from now on."""
    calls, real = [], winograd.conv3x3

    def counting(x, conv, relu=False):
        calls.append((conv, relu))
        return real(x, conv, relu)
    monkeypatch.setattr(winograd, "conv3x3", counting)
    return calls


@pytest.mark.parametrize("n,c,co,h,w,layout,bias,relu,chunk", [
    (2, 64, 128, 13, 9, "nchw", True, False, None),  # batch, NCHW input, crops in both directions
    (1, 128, 128, 3, 5, "cl", False, True, None),  # smaller than one tile, no bias
    (1, 96, 130, 21, 34, "cl", True, True, 600),  # many chunks: top/bottom padding per chunk
])
def test_winograd_conv_matches_float64_reference(monkeypatch, n, c, co, h, w, layout, bias, relu, chunk):
    if chunk:
        monkeypatch.setattr(winograd, "CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    conv = nn.Conv2d(c, co, 3, padding=1, bias=bias)
    if bias:
        nn.init.normal_(conv.bias, std=0.5)
    x = torch.randn(n, c, h, w)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert winograd.usable(conv, x)
        y = winograd.conv3x3(x, conv, relu=relu)
    ref = nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double() if bias else None, padding=1)
    ref = ref.relu() if relu else ref
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    err = (y.double() - ref).abs().max().item() / ref.abs().max().item()
    assert err < 5e-5, err  # F(4x4,3x3) in float32: ~1e-5 of the output range


def test_winograd_applies_only_where_exact_and_tracks_weight_changes():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3, padding=1)
    x = torch.randn(1, 64, 8, 8)
    with torch.inference_mode():
        assert winograd.usable(conv, x)
        assert not winograd.usable(nn.Conv2d(64, 128, 3, padding=1, stride=2), x)
        assert not winograd.usable(nn.Conv2d(64, 128, 1), x)
        assert not winograd.usable(nn.Conv2d(64, 128, 3, padding=1, padding_mode="reflect"), x)
        assert not winograd.usable(nn.Conv2d(8, 128, 3, padding=1), torch.randn(1, 8, 8, 8))  # too narrow
        assert not winograd.usable(conv, x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not winograd.usable(conv, x)
    assert not winograd.usable(conv, x)  # grad enabled: the autograd path (oneDNN) runs
    with torch.inference_mode():
        before = winograd.conv3x3(x, conv)
    with torch.no_grad():
        conv.weight.mul_(2)  # an optimizer step or load_state_dict: the cached transform must follow
        conv.bias.mul_(2)
    with torch.inference_mode():
        torch.testing.assert_close(winograd.conv3x3(x, conv), 2 * before, rtol=1e-4, atol=1e-4)


def test_convert_revert_keep_parameters_and_fall_back_where_winograd_does_not_apply(monkeypatch):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(128, 128, 3, padding=1),
                        nn.Conv2d(128, 128, 3, padding=1, stride=2), nn.ReLU())
    params, keys = list(seq.parameters()), list(seq.state_dict())
    x = torch.randn(2, 64, 11, 13)
    ref = seq(x).detach()
    assert cpu_kernels.convert(seq) == 2 and cpu_kernels.convert(seq) == 0  # fixed rule: no timing
    assert [type(m) for m in seq] == [cpu_kernels.FastConv2d, nn.Identity, cpu_kernels.FastConv2d, nn.Conv2d, nn.ReLU]
    assert converted(seq) == {"0": True, "2": False}
    assert list(seq.state_dict()) == keys and all(a is b for a, b in zip(seq.parameters(), params, strict=True))
    calls = count_winograd_calls(monkeypatch)
    with torch.inference_mode():
        torch.testing.assert_close(seq(x), ref, rtol=1e-4, atol=1e-4)
    assert calls == [(seq[0], True), (seq[2], False)]
    # grad, autocast, float64, GPU: the regular convs, same results
    y = seq(x)
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    assert all(p.grad is not None for p in params)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(seq(x).float(), ref, rtol=0.05, atol=0.05)
    if DEVICE != "cpu":
        with torch.inference_mode():
            torch.testing.assert_close(seq.to(DEVICE)(x.to(DEVICE)).cpu(), ref, rtol=1e-3, atol=1e-3)
    with torch.inference_mode():
        torch.testing.assert_close(seq.double()(x.double()), ref.double(), rtol=1e-4, atol=1e-4)
    assert len(calls) == 2
    assert cpu_kernels.revert(seq) == 2 and cpu_kernels.revert(seq) == 0
    assert [type(m) for m in seq] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.Conv2d, nn.ReLU] and seq[1].inplace
    assert all(a is b for a, b in zip(seq.parameters(), params, strict=True))
    assert not any(hasattr(m, "_winograd_cache") or hasattr(m, "_packed") for m in seq)


def test_eval_and_train_are_plain_pytorch(monkeypatch):
    """model.eval() / model.train() swap no module, time nothing and touch no file."""
    import builtins

    torch.manual_seed(0)
    model = build_detector(load_config(None, SMALL))
    modules = {name: type(m) for name, m in model.named_modules()}
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    monkeypatch.setattr(cpu_kernels, "convert", lambda *a, **k: pytest.fail("eval() converted the model"))
    for _ in range(2):
        model.eval()
        assert {name: type(m) for name, m in model.named_modules()} == modules and not model.training
        model.train()
        assert {name: type(m) for name, m in model.named_modules()} == modules and model.training
    assert opened == []


def test_predictor_converts_for_cpu_inference_and_close_reverts(monkeypatch):
    torch.manual_seed(0)
    # on the CPU: Winograd is a CPU inference path; the fixed rule (no timing) makes the calls predictable
    cfg = load_config(None, SMALL + ["runtime.winograd_tune=false"])
    model = build_detector(cfg)
    keys, params = list(model.state_dict()), list(model.parameters())
    predictor = TorchPredictor(model, ["a", "b"], "cpu", cfg)  # runtime.winograd None = auto: on for the CPU
    assert converted(model) == SMALL_CONVERTED
    assert all(isinstance(model.get_submodule(f"backbone.body.{int(n.rsplit('.', 1)[1]) + 1}"), nn.Identity)
               for n, relu in SMALL_CONVERTED.items() if relu)
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert cpu_kernels.convert(model) == 0
    assert all(isinstance(getattr(model.roi_head, n), cpu_kernels.PrepackedLinear) for n in ("fc6", "fc7"))
    calls = count_winograd_calls(monkeypatch)
    imgs = [i.cpu() for i in images()]
    fast = predictor.predict_batch(imgs)  # two sizes: two forwards
    # once per converted conv per forward, with the ReLU fused where the conv took it over
    by_name = {model.get_submodule(n): (n, relu) for n, relu in SMALL_WINOGRAD.items()}
    assert sorted(by_name[c] for c, _ in calls) == sorted(list(SMALL_WINOGRAD.items()) * 2)
    assert all(relu == by_name[c][1] for c, relu in calls)
    predictor.close()
    assert converted(model) == {} and list(model.state_dict()) == keys
    assert type(model.roi_head.fc6) is nn.Linear
    assert all(isinstance(model.get_submodule(f"backbone.body.{int(n.rsplit('.', 1)[1]) + 1}"), nn.ReLU)
               for n, relu in SMALL_CONVERTED.items() if relu)
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    plain = TorchPredictor(model, ["a", "b"], "cpu", load_config(None, SMALL + ["runtime.winograd=false"]))
    assert converted(model) == {}
    assert len(calls) == 2 * len(SMALL_WINOGRAD)
    slow = plain.predict_batch(imgs)
    assert len(calls) == 2 * len(SMALL_WINOGRAD) and sum(len(d["boxes"]) for d in slow) > 10
    for a, b in zip(fast, slow):
        assert a["labels"].tolist() == b["labels"].tolist()
        assert abs(a["boxes"] - b["boxes"]).max() < 1e-3 and abs(a["scores"] - b["scores"]).max() < 1e-4
    model.train()
    tgt = {"boxes": torch.tensor([[20.0, 30, 90, 120]]), "labels": torch.tensor([1])}
    sum(model(imgs, [tgt, tgt]).values()).backward()
    assert len(calls) == 2 * len(SMALL_WINOGRAD)


def test_prepacked_kernels_equal_the_plain_ops_at_any_size():
    """The prepacked oneDNN conv is the plain conv with its weight reordered once: equal to float32 rounding,
    also at sizes other than the one it was packed for; PrepackedLinear equals F.linear; bf16 within bf16."""
    if not cpu_kernels.onednn_available():
        pytest.skip("this torch has no oneDNN (mkldnn) ops")
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 32, 3, padding=1)
    lin = nn.Linear(96, 40)
    with torch.inference_mode():
        for shape in ((1, 3, 40, 56), (2, 3, 17, 23), (1, 3, 64, 64)):
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last)  # the model's CPU layout
            torch.testing.assert_close(cpu_kernels.prepacked(x, conv, relu=True), torch.relu(conv(x)), rtol=1e-5,
                                       atol=1e-6)
        x = torch.randn(7, 96)
        fast = cpu_kernels.PrepackedLinear.from_linear(lin)
        torch.testing.assert_close(fast(x), lin(x), rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, ref = fast(x), lin(x)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), ref.float(), rtol=0.02, atol=0.02)
        lin.weight.mul_(2)  # a changed weight (load_state_dict, an optimizer step): the packed copy follows
        torch.testing.assert_close(fast(x), lin(x), rtol=1e-5, atol=1e-5)
    y = fast(torch.randn(7, 96))  # grad enabled: the plain op, autograd-aware
    y.sum().backward()
    assert lin.weight.grad is not None
