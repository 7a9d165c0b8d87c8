"""Truncated SVD of fc6 / fc7 (vggdet/deploy/svd.py, Fast R-CNN section 3.1): exact at full rank, error falling
with the rank, checkpoints that load everywhere, one-line errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vggdet import build_detector, load_config
from vggdet.deploy.svd import SVDError, compress_checkpoint, compress_fc
from vggdet.inference.torch_backend import Detector
from vggdet.training.checkpoint import load_checkpoint, save_checkpoint

SMALL = ["model.backbone.width=0.25", "model.backbone.freeze_at=0", "model.roi_head.fc_dim=256",
         "model.num_classes=2", "model.input.min_size=192", "model.input.max_size=320",
         "model.rpn.min_size=4", "model.rpn.pre_nms_top_n_test=1000", "model.rpn.post_nms_top_n_test=100"]


def small_model():
    torch.manual_seed(0)
    return build_detector(load_config(None, SMALL)).eval()


def images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, h, w, generator=g) for h, w in ((150, 200), (190, 130))]


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
    det_full = Detector.from_checkpoint(str(path), device="cpu")
    det_small = Detector.from_checkpoint(str(small), device="cpu")
    assert isinstance(det_small.model.roi_head.fc6, nn.Sequential)
    imgs = images()
    full, low = det_full.predict_batch(imgs), det_small.predict_batch(imgs)
    assert sum(len(d["boxes"]) for d in full) > 0
    for a, b in zip(low, full):
        assert a["labels"].tolist() == b["labels"].tolist()
        torch.testing.assert_close(torch.from_numpy(a["boxes"]), torch.from_numpy(b["boxes"]), rtol=2e-3, atol=2e-3)
    # a real compression loads and runs; a rank above min(in, out) is a clear error
    compress_checkpoint(str(path), 32, 16, str(small))
    dets = Detector.from_checkpoint(str(small), device="cpu").predict_batch(imgs)
    assert len(dets) == 2
    with pytest.raises(SVDError, match="min"):
        compress_checkpoint(str(path), 100000, None, str(tmp_path / "bad.pth"))
    with pytest.raises(SVDError, match="already compressed"):
        compress_checkpoint(str(small), 16, None, str(tmp_path / "bad.pth"))
