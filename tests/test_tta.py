"""Test-time augmentation: boxes from the flipped image and other scales come back to the input image and
merge; off, it is not there at all."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY
from torch import nn

from vggdet import Detector, build_detector, load_config
from vggdet.model.tta import TestTimeAugmentation, with_tta
from vggdet.training.checkpoint import save_checkpoint


class BrightBox(nn.Module):
    """A stand-in detector: one box around the pixels brighter than 0.5, in input pixels."""

    def __init__(self):
        super().__init__()
        self.rpn = nn.Identity()
        self.transform = SimpleNamespace(test_min_size=600, max_size=1000)
        self.roi_head = SimpleNamespace(nms_thresh=0.3, detections_per_img=100)
        self.seen: list = []

    def forward(self, images):
        self.seen.append((self.transform.test_min_size, self.transform.max_size))
        out = []
        for img in images:
            ys, xs = torch.nonzero(img[0] > 0.5, as_tuple=True)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            out.append({"boxes": box, "labels": torch.tensor([1]), "scores": torch.tensor([0.9])})
        return out


def test_off_is_the_model_itself():
    model = BrightBox()
    assert with_tta(model) is model and with_tta(model, False, []) is model


def test_flipped_boxes_come_back_and_merge():
    img = torch.zeros(3, 40, 60)
    img[:, 10:20, 5:15] = 1.0  # the object: x 5..15, y 10..20, far from the mirror line
    model = BrightBox()
    out = with_tta(model, hflip=True)([img])[0]
    assert len(model.seen) == 2  # the image and its mirror
    assert out["boxes"].tolist() == [[5.0, 10.0, 15.0, 20.0]]  # one box, where the object is


def test_scales_run_and_the_transform_is_restored():
    model = BrightBox()
    tta = with_tta(model, hflip=True, scales=[300, 900])
    assert isinstance(tta, TestTimeAugmentation)
    img = torch.zeros(3, 40, 60)
    img[:, 1:5, 30:40] = 1.0
    tta([img])
    assert model.seen == [(600, 1000)] * 2 + [(300, 500)] * 2 + [(900, 1500)] * 2
    assert (model.transform.test_min_size, model.transform.max_size) == (600, 1000)


def test_tta_through_the_config_in_detector_and_infer(tmp_path):
    from conftest import run_tool

    cfg = load_config(None, TINY + ["model.rpn.post_nms_top_n_test=50", "model.roi_head.detections_per_img=10"])
    torch.manual_seed(0)
    save_checkpoint(str(tmp_path / "m.pt"), {"model": build_detector(cfg).state_dict(), "config": cfg.to_dict(),
                                             "classes": ["a", "b"]})
    over = ["runtime.score_thresh=0.0", "test.tta.hflip=true", "test.tta.scales=[96]"]
    det = Detector.from_checkpoint(str(tmp_path / "m.pt"), device="cpu", overrides=over)
    assert isinstance(det.model, TestTimeAugmentation) and not det.model.training
    img = np.random.default_rng(0).integers(0, 255, (100, 140, 3), dtype=np.uint8)
    out = det.predict(img)
    assert 0 < len(out["boxes"]) <= 10
    assert (out["boxes"][:, [0, 2]] <= 140).all() and (out["boxes"][:, [1, 3]] <= 100).all()
    assert (out["boxes"] >= 0).all() and list(out["scores"]) == sorted(out["scores"], reverse=True)
    import cv2

    cv2.imwrite(str(tmp_path / "x.png"), img)
    r = run_tool(["tools/infer.py", str(tmp_path / "m.pt"), str(tmp_path / "x.png"), "--tta", "--out",
                  str(tmp_path / "o"), "--no-draw", "--score-thr", "0"])
    assert r.returncode == 0, r.stderr[-2000:]
    with pytest.raises(ValueError, match="needs a model with an RPN"):
        with_tta(build_detector(load_config(None, TINY + ["model.proposals=external"])), hflip=True)
