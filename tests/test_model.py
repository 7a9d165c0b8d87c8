"""Model tests: paper constants, box maths, samplers, shapes, weight loading, configs, a model that learns."""
from __future__ import annotations

import pytest
import torch
from conftest import TINY
from torchvision.ops import box_iou

from vggdet import ConfigError, build_detector, load_config
from vggdet.model.backbone import WeightsError
from vggdet.model.boxes import BoxCoder, base_anchors, grid_anchors, match, sample_balanced


def tiny_model(*extra: str):
    torch.manual_seed(0)
    return build_detector(load_config(None, TINY + list(extra)))


def two_box_image():
    """A noisy grey image with a red rectangle (label 1) and a blue disc (label 2)."""
    g = torch.Generator().manual_seed(0)
    img = 0.5 + 0.1 * torch.randn(3, 128, 160, generator=g)
    img[:, 20:90, 15:70] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(160), indexing="ij")
    img[:, ((yy - 70) ** 2 + (xx - 115) ** 2) < 30**2] = torch.tensor([0.1, 0.2, 0.9])[:, None]
    return img.clamp(0, 1), {"boxes": torch.tensor([[15.0, 20, 70, 90], [85, 40, 145, 100]]),
                             "labels": torch.tensor([1, 2])}


def empty_target():
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}


# ------------------------------------------------------------------------------------- paper constants
def test_base_anchors_equal_py_faster_rcnn():
    # py-faster-rcnn generate_anchors() output, 0-based inclusive pixels.
    original = torch.tensor([[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                             [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                             [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]], dtype=torch.float32)
    ours = base_anchors(16, (8, 16, 32), (0.5, 1.0, 2.0))
    assert torch.equal(ours, original + torch.tensor([0, 0, 1, 1]))  # inclusive -> continuous


def test_grid_anchors_shift_by_stride():
    base = base_anchors()
    a = grid_anchors(base, 2, 3, 16).view(2, 3, 9, 4)
    assert torch.equal(a[0, 0], base)
    assert torch.equal(a[1, 2], base + torch.tensor([32.0, 16, 32, 16]))


def test_box_coder_round_trip_with_stds():
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(50, 2, generator=g) * 300
    ref = torch.cat([ref, ref + 5 + torch.rand(50, 2, generator=g) * 200], dim=1)
    box = torch.rand(50, 2, generator=g) * 300
    box = torch.cat([box, box + 5 + torch.rand(50, 2, generator=g) * 200], dim=1)
    coder = BoxCoder((0.1, 0.1, 0.2, 0.2))
    d = coder.encode(box, ref)
    torch.testing.assert_close(coder.decode(d, ref), box, rtol=1e-5, atol=1e-3)
    # the stds are torchvision's weights (10, 10, 5, 5): compare with its coder
    from torchvision.models.detection._utils import BoxCoder as TVCoder

    torch.testing.assert_close(d, TVCoder((10.0, 10.0, 5.0, 5.0)).encode_single(box, ref), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------- samplers
def test_rpn_sampler_counts_and_fg_cap():
    labels = torch.cat([torch.ones(300, dtype=torch.int64), torch.zeros(5000, dtype=torch.int64),
                        -torch.ones(100, dtype=torch.int64)])
    fg, bg = sample_balanced(labels, 256, 0.5)
    assert fg.numel() == 128 and bg.numel() == 128
    assert (labels[fg] == 1).all() and (labels[bg] == 0).all()
    fg, bg = sample_balanced(labels[250:], 256, 0.5)  # only 50 fg: bg fills up
    assert fg.numel() == 50 and bg.numel() == 206


def test_roi_sampler_fg_fraction_and_gt_added():
    model = tiny_model()
    head = model.roi_head
    gt = torch.tensor([[10.0, 10, 60, 60], [70, 70, 120, 120]])
    # 200 jittered copies of the GT (mostly fg) + 500 random boxes (mostly bg)
    g = torch.Generator().manual_seed(0)
    jitter = gt.repeat(100, 1) + torch.randn(200, 4, generator=g) * 3
    xy = torch.rand(500, 2, generator=g) * 100
    props = torch.cat([jitter, torch.cat([xy, xy + 20], dim=1)])
    rois, labels, targets = head.sample([props], [{"boxes": gt, "labels": torch.tensor([1, 2])}])
    assert rois[0].shape[0] == labels.numel() == 128
    assert int((labels > 0).sum()) == 32  # 25 % of 128
    iou = box_iou(rois[0], gt).max(1).values
    assert (iou[labels > 0] >= 0.5).all() and (iou[labels == 0] < 0.5).all()
    assert (targets[labels == 0] == 0).all()
    # GT boxes are candidates: with no proposals the GTs themselves are the fg
    rois, labels, _ = head.sample([torch.zeros(0, 4)], [{"boxes": gt, "labels": torch.tensor([1, 2])}])
    assert labels.tolist() == [1, 2]


def test_match_rpn_rule_best_anchor_is_fg():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 30, 30], [50, 50, 60, 60]])
    gt = torch.tensor([[0.0, 0, 20, 20]])  # best IoU 0.44 < 0.7, still fg by the "best anchor" rule
    labels, idx = match(anchors, gt, 0.7, 0.3, allow_best=True)
    assert labels.tolist() == [0, 1, 0]
    labels, _ = match(anchors, gt, 0.7, 0.3, allow_best=False)
    assert labels.tolist() == [0, -1, 0]


# ----------------------------------------------------------------------------------------- the model
def test_train_losses_and_empty_gt_image():
    model = tiny_model().train()
    img, tgt = two_box_image()
    losses = model([img, img[:, :100]], [tgt, empty_target()])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    losses = model([img[:, :100]], [empty_target()])
    assert losses["loss_rpn_box"].item() == 0.0 and losses["loss_box"].item() == 0.0
    assert losses["loss_cls"].item() > 0 and losses["loss_rpn_cls"].item() > 0
    sum(losses.values()).backward()  # the graph is intact


def test_empty_gt_with_original_bg_lo_trains():
    model = tiny_model("model.roi_head.bg_iou_lo=0.1").train()
    losses = model([torch.rand(3, 96, 96)], [empty_target()])
    assert losses["loss_box"].item() == 0.0
    sum(losses.values()).backward()


def test_roi_head_shapes():
    model = tiny_model().eval()
    feats = torch.rand(2, model.backbone.out_channels, 8, 10)
    rois = [torch.tensor([[0.0, 0, 50, 50], [10, 10, 100, 90]]), torch.tensor([[5.0, 5, 40, 60]])]
    scores, deltas = model.roi_head.predict(feats, rois)
    assert scores.shape == (3, 3) and deltas.shape == (3, 12)


def test_eval_outputs_inside_image_and_mapped_back():
    model = tiny_model().eval()
    sizes = [(77, 203), (150, 90)]
    with torch.no_grad():
        dets = model([torch.rand(3, h, w) for h, w in sizes])
    for d, (h, w) in zip(dets, sizes):
        assert d["boxes"].shape[1] == 4 and d["labels"].dtype == torch.int64
        assert 0 < len(d["boxes"]) <= 100  # a random model scores ~1/3 per class: well above 0.05
        assert (d["boxes"] >= 0).all() and (d["boxes"][:, [0, 2]] <= w + 1e-3).all()
        assert (d["boxes"][:, [1, 3]] <= h + 1e-3).all()
        assert ((d["labels"] >= 1) & (d["labels"] <= 2)).all() and (d["scores"] > 0.05).all()


def test_tiny_and_thin_images_give_no_detections_not_errors():
    """A 2x3 image (resized x43: every proposal is below rpn.min_size x scale, so zero RoIs reach the head)
    and a 1x4000 one (its shorter side resized to 0 px before the clamp) are inputs, not crashes."""
    model = tiny_model("model.rpn.min_size=4").eval()
    with torch.no_grad():
        dets = model([torch.rand(3, 2, 3), torch.rand(3, 1, 4000), torch.rand(3, 4000, 1)])
    assert [d["boxes"].shape for d in dets] == [(0, 4)] * 3
    assert torch.equal(BoxCoder((0.1, 0.1, 0.2, 0.2)).decode(torch.zeros(0, 12), torch.zeros(0, 4)), torch.zeros(0, 12))


def test_full_size_vgg16_forward_shapes():
    cfg = load_config(None, ["model.input.min_size=224", "model.input.max_size=320"])
    model = build_detector(cfg).eval()
    assert model.backbone.out_channels == 512
    assert len(model.backbone.body) == 30  # torchvision vgg16().features[:30]
    assert not any(p.requires_grad for p in model.backbone.body[:10].parameters())  # conv1, conv2 frozen
    assert all(p.requires_grad for p in model.backbone.body[10:].parameters())
    assert model.roi_head.fc6.weight.shape == (4096, 512 * 7 * 7)
    assert model.roi_head.cls_score.out_features == 21 and model.roi_head.bbox_pred.out_features == 84
    with torch.no_grad():
        feats = model.backbone(torch.rand(1, 3, 224, 320))
        assert feats.shape == (1, 512, 14, 20)
        dets = model([torch.rand(3, 224, 320)])
    assert dets[0]["boxes"].shape[1] == 4


def test_load_torchvision_format_vgg16_weights(tmp_path):
    import torchvision

    torch.manual_seed(3)
    sd = torchvision.models.vgg16(weights=None).state_dict()
    path = tmp_path / "vgg16.pth"
    torch.save(sd, path)
    cfg = load_config(None, [f"model.backbone.weights={path}", "model.input.min_size=64"])
    model = build_detector(cfg)
    body = model.backbone.body.state_dict()
    assert len(body) == 26  # 13 convs x (weight, bias)
    for k, v in body.items():
        assert torch.equal(v, sd[f"features.{k}"]), k
    assert torch.equal(model.roi_head.fc6.weight, sd["classifier.0.weight"])
    assert torch.equal(model.roi_head.fc6.bias, sd["classifier.0.bias"])
    assert torch.equal(model.roi_head.fc7.weight, sd["classifier.3.weight"])
    # a file with a key missing, and a missing file, are clear errors
    del sd["features.28.weight"]
    torch.save(sd, path)
    with pytest.raises(WeightsError, match="features.28.weight"):
        build_detector(cfg)
    with pytest.raises(WeightsError, match="not found"):
        build_detector(load_config(None, [f"model.backbone.weights={tmp_path / 'nope.pth'}"]))


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("depth", [11, 13, 16, 19])
def test_every_vgg_depth_equals_torchvision_features(tmp_path, depth, batch_norm):
    """The backbone of each depth, loaded through the config key, equals torchvision's features[:-1]."""
    import torchvision

    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f"vgg{depth}{'_bn' if batch_norm else ''}")(weights=None).eval()
    for m in tv.features:
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial running statistics, so they must load too
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.save({k: v for k, v in tv.state_dict().items() if k.startswith("features.")}, tmp_path / "w.pth")
    cfg = load_config(None, [f"model.backbone.depth={depth}", f"model.backbone.batch_norm={batch_norm}",
                             f"model.backbone.weights={tmp_path / 'w.pth'}", "model.num_classes=2",
                             "model.roi_head.fc_dim=16", "model.roi_head.fc6_rank=4", "model.roi_head.fc7_rank=4"])
    backbone = build_detector(cfg).backbone.eval()  # SVD heads: no classifier.0/3 needed in the file
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in backbone.body)
    assert convs == {11: 8, 13: 10, 16: 13, 19: 16}[depth]
    x = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), tv.features[:-1](x), rtol=1e-5, atol=1e-5)
    assert backbone(x).shape == (2, 512, 4, 5)  # stride 16


def test_weights_of_another_depth_are_one_clear_error(tmp_path):
    import torchvision

    torch.save(torchvision.models.vgg11(weights=None).state_dict(), tmp_path / "vgg11.pth")
    cfg = load_config(None, [f"model.backbone.weights={tmp_path / 'vgg11.pth'}"])
    with pytest.raises(WeightsError, match=r"a VGG11 state_dict, but the model is VGG16 \(model.backbone.depth=16"):
        build_detector(cfg)
    with pytest.raises(ConfigError, match="model.backbone.depth"):
        load_config(None, ["model.backbone.depth=17"])


def test_pretrained_weights_need_full_width(tmp_path):
    import torchvision

    path = tmp_path / "vgg16.pth"
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="shape mismatch"):
        build_detector(load_config(None, TINY + [f"model.backbone.weights={path}"]))


def test_external_proposals_mode():
    model = tiny_model("model.proposals=external")
    assert model.rpn is None
    img, tgt = two_box_image()
    props = tgt["boxes"] + torch.tensor([2.0, -3, 4, 1])
    losses = model.train()([img], [{**tgt, "proposals": props}])
    assert set(losses) == {"loss_cls", "loss_box"}
    with pytest.raises(ValueError, match="proposals"):
        model([img], [tgt])
    model.eval()
    with torch.no_grad():
        dets = model([img], proposals=[props])
    # every detection is a refined proposal: it overlaps one of them (2 proposals x 2 classes, none overlapping)
    assert len(dets[0]["boxes"]) == 4
    assert (box_iou(dets[0]["boxes"], props).max(1).values > 0.3).all()
    with pytest.raises(ValueError, match="proposals"):
        model([img])


# ---------------------------------------------------------------------------------------------- config
def test_config_files_and_overrides():
    cfg = load_config("configs/voc_vgg16.py", overrides=["model.roi_head.pool=align", "train.lr=0.002",
                                                         "model.backbone.weights=null"])
    assert cfg.model.roi_head.pool == "align" and cfg.train.lr == 0.002 and cfg.model.backbone.weights is None
    assert cfg.model.num_classes == 20 and cfg.name == "voc_vgg16"
    coco = load_config("configs/coco_vgg16.py")
    assert coco.model.num_classes == 80 and coco.test.metric == "coco"
    text = cfg.dump()
    ns: dict = {}
    exec(text, ns)  # the Python dump is itself a loadable config
    assert ns["model"]["roi_head"]["pool"] == "align"
    import json

    assert json.loads(cfg.dump("json"))["train"]["lr"] == 0.002


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'model.roi_head.pool'"):
        load_config(None, ["model.roi_head.pol=align"])
    with pytest.raises(ConfigError, match="'train.lr' expects float"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="one of 'pool', 'align'"):
        load_config(None, ["model.roi_head.pool=avg"])
    with pytest.raises(ConfigError, match="not found: .*missing.py"):
        load_config(str(tmp_path / "missing.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("model = dict(backbone=dict(widht=0.5))\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(bad))
    msg = str(e.value)
    assert "bad.py" in msg and "model.backbone.widht" in msg and "model.backbone.width" in msg
    assert "\n" not in msg


# ------------------------------------------------------------------------------ a model that learns
def test_tiny_model_overfits_one_image():
    model = tiny_model()
    img, tgt = two_box_image()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    first = None
    for _ in range(400):  # ~0.9 IoU here; margin for other CPUs' rounding (0.695 seen at 250 steps)
        loss = sum(model([img], [tgt]).values())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 5
    model.eval()
    with torch.no_grad():
        det = model([img])[0]
    for box, label in zip(tgt["boxes"], tgt["labels"]):
        mine = det["labels"] == label
        assert mine.any(), f"class {int(label)} not detected"
        top = det["boxes"][mine][det["scores"][mine].argmax()]  # the most confident box of that class
        assert box_iou(top[None], box[None]).item() > 0.7
        assert det["scores"][mine].max() > 0.5
