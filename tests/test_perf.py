"""Performance paths: the fast path's detections equal the plain path's, autocast runs, truncated SVD.

VGGDET_TEST_DEVICE=cuda runs the device tests on the GPU (benchmarks/gpu_check.sh does); default cpu.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from vggdet import build_detector, load_config
from vggdet.checkpoint import load_checkpoint, save_checkpoint
from vggdet.model import winograd
from vggdet.predictor import Detector
from vggdet.svd import SVDError, compress_checkpoint, compress_fc

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
    """fast: True/False force the CPU fast path (channels_last + Winograd) on/off; None = auto."""
    model.channels_last = model.winograd = fast
    model.eval()  # applies the winograd switch
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
    model = build_detector(load_config(None, ["model.input.min_size=96"])).to(DEVICE)
    model.winograd = False
    model.eval()
    x = torch.rand(1, 3, 96, 136, device=DEVICE)
    with torch.inference_mode():
        plain = model.backbone(x)
        tol = dict(rtol=1e-3, atol=1e-3 * plain.abs().max().item())
        torch.testing.assert_close(model.backbone(x.contiguous(memory_format=torch.channels_last)), plain, **tol)
        if DEVICE == "cpu":
            assert winograd.convert(model.backbone) == 12  # conv1_2..conv5_3 (conv1_1: 3 channels)
            torch.testing.assert_close(model.backbone(x), plain, **tol)


# ------------------------------------------------------------------------------------------ Winograd
# SMALL (width 0.25): every 3x3 conv but conv1_1 (3 input channels) is converted and fuses the ReLU after
# it; the RPN conv (128 -> 512) without a fused ReLU (RPN.forward applies F.relu). Name -> fused ReLU.
SMALL_CONVERTED = {f"backbone.body.{i}": True for i in (2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)}
SMALL_CONVERTED["rpn.conv"] = False
# With tuning off, the fixed rule runs Winograd on conv4_1 (64 -> 128) and conv4_2..conv5_3 (128 -> 128),
# which reach MIN_IN / MIN_OUT, and the RPN conv; conv1_2..conv3_x are too narrow.
SMALL_WINOGRAD = {"backbone.body.17": True, "backbone.body.19": True, "backbone.body.21": True,
                  "backbone.body.24": True, "backbone.body.26": True, "backbone.body.28": True, "rpn.conv": False}


def converted(model: nn.Module) -> dict:
    """Name -> fused ReLU of every WinogradConv2d in `model`."""
    return {name: m.relu for name, m in model.named_modules() if isinstance(m, winograd.WinogradConv2d)}


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
    assert winograd.convert(seq, tune=False) == 2 and winograd.convert(seq, tune=False) == 0  # fixed rule: no timing
    assert [type(m) for m in seq] == [winograd.WinogradConv2d, nn.Identity, winograd.WinogradConv2d, nn.Conv2d, nn.ReLU]
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
    assert winograd.revert(seq) == 2 and winograd.revert(seq) == 0
    assert [type(m) for m in seq] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.Conv2d, nn.ReLU] and seq[1].inplace
    assert all(a is b for a, b in zip(seq.parameters(), params, strict=True))
    assert not any(hasattr(m, "_winograd_cache") for m in seq)


def test_eval_converts_model_to_winograd_and_train_reverts(monkeypatch):
    torch.manual_seed(0)
    # on the CPU: Winograd is a CPU inference path; the fixed rule (no timing) makes the calls predictable
    model = build_detector(load_config(None, SMALL + ["runtime.winograd_tune=false"]))
    keys, params = list(model.state_dict()), list(model.parameters())
    assert converted(model) == {}
    model.eval()  # winograd None = auto: on for the CPU
    assert converted(model) == SMALL_CONVERTED
    assert all(isinstance(model.get_submodule(f"backbone.body.{int(n.rsplit('.', 1)[1]) + 1}"), nn.Identity)
               for n, relu in SMALL_CONVERTED.items() if relu)
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert winograd.convert(model, tune=False) == 0
    calls = count_winograd_calls(monkeypatch)
    imgs = [i.cpu() for i in images()]
    with torch.inference_mode():
        fast = model(imgs)
    # once per converted conv per forward, with the ReLU fused where the conv took it over
    by_name = {model.get_submodule(n): (n, relu) for n, relu in SMALL_WINOGRAD.items()}
    assert sorted(by_name[c] for c, _ in calls) == sorted(SMALL_WINOGRAD.items())
    assert all(relu == by_name[c][1] for c, relu in calls)
    model.winograd = False
    model.eval()  # the switch takes effect at eval()
    assert converted(model) == {}
    with torch.inference_mode():
        plain = model(imgs)
    assert len(calls) == len(SMALL_WINOGRAD)
    assert sum(len(d["boxes"]) for d in plain) > 10
    assert_same_detections(fast, plain)
    model.winograd = None
    model.eval()
    assert converted(model) == SMALL_CONVERTED
    model.train()
    assert converted(model) == {} and list(model.state_dict()) == keys
    assert all(isinstance(model.get_submodule(f"backbone.body.{int(n.rsplit('.', 1)[1]) + 1}"), nn.ReLU)
               for n, relu in SMALL_CONVERTED.items() if relu)
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    tgt = {"boxes": torch.tensor([[20.0, 30, 90, 120]]), "labels": torch.tensor([1])}
    sum(model(imgs, [tgt, tgt]).values()).backward()
    assert len(calls) == len(SMALL_WINOGRAD)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_inference_runs_and_stays_close(dtype):
    if DEVICE == "cpu" and dtype == "float16":
        pytest.skip("fp16 autocast is a GPU mode")
    model = small_model()
    imgs = images()
    low = detect(model, imgs, fast=None, dtype=getattr(torch, dtype))
    for d in low:
        assert d["boxes"].dtype == torch.float32 and torch.isfinite(d["boxes"]).all()
        assert len(d["boxes"]) > 0
    # the head on the same RoIs: class probabilities within a few 1e-2 of fp32
    with torch.inference_mode():
        feats = model.backbone(model.transform(imgs)[0])
        rois = [torch.tensor([[0.0, 0, 100, 80], [20, 30, 150, 170]], device=DEVICE)]
        s32, _ = model.roi_head.predict(feats[:1], rois)
        with torch.autocast(torch.device(DEVICE).type, dtype=getattr(torch, dtype)):
            s16, _ = model.roi_head.predict(feats[:1], rois)
    torch.testing.assert_close(s16.float().softmax(1), s32.softmax(1), rtol=0, atol=5e-2)


def test_train_step_under_autocast_on_device():
    model = small_model().train()
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 160, 200, generator=g).to(DEVICE)
    tgt = {"boxes": torch.tensor([[20.0, 30, 90, 120], [100, 40, 180, 150]], device=DEVICE),
           "labels": torch.tensor([1, 2], device=DEVICE)}
    dtype = torch.float16 if DEVICE.startswith("cuda") else torch.bfloat16
    with torch.autocast(torch.device(DEVICE).type, dtype=dtype):
        losses = model([img, img.flip(-1)], [tgt, tgt])
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert next(model.parameters()).device.type == torch.device(DEVICE).type


# ------------------------------------------------------------------------------------------ truncated SVD
def test_compress_fc_full_rank_is_exact_and_error_falls_with_rank():
    torch.manual_seed(0)
    fc = nn.Linear(96, 64)
    x = torch.randn(20, 96)
    full = compress_fc(fc, 64)
    assert isinstance(full, nn.Sequential) and full[0].bias is None
    assert full[0].weight.shape == (64, 96) and full[1].weight.shape == (64, 64)
    torch.testing.assert_close(full(x), fc(x), rtol=1e-4, atol=1e-4)
    errors = [(compress_fc(fc, r)(x) - fc(x)).norm().item() for r in (4, 16, 32, 48)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]
    with pytest.raises(SVDError, match="rank"):
        compress_fc(fc, 65)
    with pytest.raises(SVDError, match="rank"):
        compress_fc(fc, 0)


def test_compress_checkpoint_round_trip(tmp_path):
    model = small_model().cpu()
    cfg = load_config(None, SMALL)
    path, small = tmp_path / "full.pth", tmp_path / "small.pth"
    save_checkpoint(str(path), {"model": model.state_dict(), "config": cfg.to_dict(), "classes": ["a", "b"],
                                "optimizer": {"state": {}}, "epoch": 3})
    fc6_in = model.roi_head.fc6.in_features
    # full rank: the same detections
    compress_checkpoint(str(path), fc6_in if fc6_in < 256 else 256, 256, str(small))
    ck = load_checkpoint(str(small))
    assert "optimizer" not in ck and ck["epoch"] == 3 and ck["classes"] == ["a", "b"]
    assert ck["config"]["model"]["roi_head"]["fc6_rank"] == min(fc6_in, 256)
    assert "roi_head.fc6.weight" not in ck["model"] and "roi_head.fc6.0.weight" in ck["model"]
    det_full = Detector.from_checkpoint(str(path), device=DEVICE)
    det_small = Detector.from_checkpoint(str(small), device=DEVICE)
    assert isinstance(det_small.model.roi_head.fc6, nn.Sequential)
    imgs = images()
    assert_same_detections(detect(det_small.model, imgs, None), detect(det_full.model, imgs, None), rtol=2e-3)
    # a real compression loads and runs; a rank above min(in, out) is a clear error
    compress_checkpoint(str(path), 32, 16, str(small))
    dets = Detector.from_checkpoint(str(small), device=DEVICE).predict_batch([i.cpu() for i in imgs])
    assert len(dets) == 2
    with pytest.raises(SVDError, match="min"):
        compress_checkpoint(str(path), 100000, None, str(tmp_path / "bad.pth"))
    with pytest.raises(SVDError, match="already compressed"):
        compress_checkpoint(str(small), 16, None, str(tmp_path / "bad.pth"))
