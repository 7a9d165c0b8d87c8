"""NMS variants against values worked out by hand from the Soft-NMS paper's formulas, and in the head."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import batched_nms

from vggdet.model.nms import grouped_nms

# A and B overlap: IoU = (10 * 10 - 1 * 10) / (100 + 100 - 90) = 90 / 110; C overlaps neither.
BOXES = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]])
SCORES = torch.tensor([0.9, 0.8, 0.7])
IOU_AB = 90 / 110


def test_hard_nms_is_torchvisions():
    keep, scores = grouped_nms(BOXES, SCORES, torch.zeros(3, dtype=torch.int64), method="nms", iou_thresh=0.3)
    assert keep.tolist() == [0, 2] and scores.tolist() == pytest.approx([0.9, 0.7])
    assert keep.tolist() == batched_nms(BOXES, SCORES, torch.zeros(3, dtype=torch.int64), 0.3).tolist()


def test_soft_nms_linear_and_gaussian_by_hand():
    groups = torch.zeros(3, dtype=torch.int64)
    keep, scores = grouped_nms(BOXES, SCORES, groups, method="soft_linear", iou_thresh=0.3)
    assert keep.tolist() == [0, 2, 1]  # B survives, decayed below C
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.8 * (1 - IOU_AB)], abs=1e-6)
    keep, scores = grouped_nms(BOXES, SCORES, groups, method="soft_gaussian", sigma=0.5)
    assert keep.tolist() == [0, 2, 1]
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.8 * math.exp(-IOU_AB**2 / 0.5)], abs=1e-6)
    # linear below the threshold: no decay at all; the score floor drops what decays under it
    keep, scores = grouped_nms(BOXES, SCORES, groups, method="soft_linear", iou_thresh=0.9)
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    keep, _ = grouped_nms(BOXES, SCORES, groups, method="soft_linear", iou_thresh=0.3, min_score=0.2)
    assert keep.tolist() == [0, 2]


def test_soft_nms_keeps_groups_apart_and_decays_twice():
    # B is decayed by A (IoU 90/110), then D by A and by B in turn: the product of both decays
    boxes = torch.cat([BOXES, torch.tensor([[0.0, 0, 10, 10]])])  # D == A but in another group
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    keep, out = grouped_nms(boxes, scores, torch.tensor([0, 0, 0, 1]), method="soft_gaussian", sigma=0.5)
    assert sorted(keep.tolist()) == [0, 1, 2, 3]
    assert out[keep.tolist().index(3)].item() == pytest.approx(0.6)  # its own group: untouched
    three = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10]])  # A, B, C: each 1 px right
    keep, out = grouped_nms(three, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.int64),
                            method="soft_linear", iou_thresh=0.3)
    # pick A: B *= 1 - 90/110, C *= 1 - 80/120 -> C (0.2333) beats B (0.1455); pick C: B *= 1 - 90/110
    b, c = 0.8 * (1 - 90 / 110), 0.7 * (1 - 80 / 120)
    assert keep.tolist() == [0, 2, 1]
    assert out.tolist() == pytest.approx([0.9, c, b * (1 - 90 / 110)], abs=1e-6)


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="model.roi_head.nms must be one of"):
        grouped_nms(BOXES, SCORES, torch.zeros(3, dtype=torch.int64), method="soft")


def test_class_agnostic_nms_in_the_head():
    from vggdet import build_detector, load_config

    torch.manual_seed(0)
    model = build_detector(load_config(None, ["model.num_classes=2", "model.backbone.width=0.0625",
                                              "model.roi_head.fc_dim=16", "model.roi_head.nms_thresh=0.5"])).eval()
    head = model.roi_head
    rois = [torch.tensor([[0.0, 0, 40, 40], [2, 0, 42, 40], [100, 100, 140, 140]])]
    # logits: RoI 0 -> class 1, RoI 1 -> class 2 (same place), RoI 2 -> class 1; zero deltas keep the boxes
    logits = torch.tensor([[0.0, 4.0, 1.0], [0.0, 1.0, 3.0], [0.0, 3.0, 0.5]])
    deltas = torch.zeros(3, 12)
    per_class = head.postprocess(logits, deltas, rois, [(200, 200)])[0]
    head.class_agnostic_nms = True
    agnostic = head.postprocess(logits, deltas, rois, [(200, 200)])[0]
    # per class: RoI 1's class-2 box survives beside RoI 0's class-1 box (different classes)
    found = {(int(label), tuple(box.tolist())) for label, box in zip(per_class["labels"], per_class["boxes"])}
    assert {(1, (0.0, 0.0, 40.0, 40.0)), (2, (2.0, 0.0, 42.0, 40.0))} <= found
    assert len(per_class["labels"]) > len(agnostic["labels"])
    # class-agnostic: one box where RoI 0 and 1 overlap (the higher score, class 1), and RoI 2's
    probs = logits.softmax(1)
    assert agnostic["labels"].tolist() == [1, 1]
    assert agnostic["scores"].tolist() == pytest.approx([probs[0, 1].item(), probs[2, 1].item()], abs=1e-6)
    torch.testing.assert_close(agnostic["boxes"], rois[0][[0, 2]])
