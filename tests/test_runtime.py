"""The runtime rules (vggdet/runtime.py): one autocast rule for training, testing and inference on every
device, and autocast runs that stay close to float32.

VGGDET_TEST_DEVICE=cuda runs the device tests on the GPU (benchmarks/gpu_check.sh does); default cpu.
"""
from __future__ import annotations

import os

import pytest
import torch
from conftest import SHAPES_CONFIG, tiny_train_overrides

from vggdet import build_detector, load_config
from vggdet.config import RuntimeConfig
from vggdet.runtime import amp_dtype

DEVICE = os.environ.get("VGGDET_TEST_DEVICE", "cpu")
if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip("VGGDET_TEST_DEVICE=cuda but CUDA is not available", allow_module_level=True)

SMALL = ["model.backbone.width=0.25", "model.backbone.freeze_at=0", "model.roi_head.fc_dim=256",
         "model.num_classes=2", "model.input.min_size=192", "model.input.max_size=320",
         "model.rpn.min_size=4", "model.rpn.pre_nms_top_n_test=1000", "model.rpn.post_nms_top_n_test=100"]


def small_model():
    torch.manual_seed(0)
    return build_detector(load_config(None, SMALL)).to(DEVICE).eval()


def images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, h, w, generator=g).to(DEVICE) for h, w in ((150, 200), (190, 130))]


def test_amp_is_one_rule_for_every_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype(RuntimeConfig(), cpu) is None and amp_dtype(RuntimeConfig(), cuda) is None
    on = RuntimeConfig(amp=True)
    assert amp_dtype(on, cpu) == torch.bfloat16 and amp_dtype(on, cuda) == torch.float16
    assert amp_dtype(RuntimeConfig(amp=True, amp_dtype="bfloat16"), cuda) == torch.bfloat16


def test_cpu_training_with_amp_runs_bf16(tmp_path):
    from vggdet.training.trainer import Trainer

    cfg = load_config(SHAPES_CONFIG, tiny_train_overrides(tmp_path, "runtime.amp=true", "runtime.device=cpu"))
    trainer = Trainer(cfg, str(tmp_path / "work"))
    assert trainer.dtype == torch.bfloat16 and not trainer.scaler.is_enabled()  # bf16 needs no loss scaling
    images, targets = next(iter(trainer.loader))
    losses = trainer.step(images, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    assert all(v == v and abs(v) < 1e3 for v in losses.values())  # finite


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_inference_runs_and_stays_close(dtype):
    if DEVICE == "cpu" and dtype == "float16":
        pytest.skip("fp16 autocast is a GPU mode")
    model = small_model()
    imgs = images()
    with torch.inference_mode(), torch.autocast(torch.device(DEVICE).type, dtype=getattr(torch, dtype)):
        low = model(imgs)
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


def test_precision_auto_is_bf16_where_the_cpu_has_it_and_one_rule(monkeypatch):
    from vggdet import runtime
    from vggdet.runtime import inference_precision

    cpu = torch.device("cpu")
    monkeypatch.delenv("VGGDET_PRECISION", raising=False)
    for flags, want in (({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16), ({"avx2", "amx_bf16"}, torch.bfloat16),
                        ({"avx2", "avx512f", "avx512_vnni"}, None)):
        monkeypatch.setattr(runtime, "cpu_flags", lambda f=flags: f)
        dtype, why = inference_precision(load_config(None), cpu)
        assert dtype == want and why.startswith("auto"), (flags, why)
        assert inference_precision(load_config(None, ["runtime.precision=fp32"]), cpu)[0] is None
        assert inference_precision(load_config(None, ["runtime.amp=true"]), cpu)[0] == torch.bfloat16  # --amp
    with pytest.raises(ValueError, match="runtime.precision=bf16: this CPU .* has no native bf16"):
        inference_precision(load_config(None, ["runtime.precision=bf16"]), cpu)
    monkeypatch.setenv("VGGDET_PRECISION", "fp32")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512_bf16"})
    assert inference_precision(load_config(None), cpu) == (None, "auto, pinned by VGGDET_PRECISION=fp32")
    with pytest.raises(ValueError, match="needs a quantized model"):
        inference_precision(load_config(None, ["runtime.precision=int8"]), cpu)
    with pytest.warns(FutureWarning, match="'test.precision' is deprecated; use 'runtime.precision'"):
        assert load_config(None, ["test.precision=bf16"]).runtime.precision == "bf16"
    # training keeps its own rule: auto precision never reaches it
    assert amp_dtype(load_config(None).runtime, cpu) is None
