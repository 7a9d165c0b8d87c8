"""Checkpoints: old files load in every tool with the same detections, the schema, renamed keys, rotation."""
from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest
import torch
from conftest import FIXTURES, LEGACY, TINY, one_line, run_tool
from conftest import LEGACY_EXPECTED as EXPECTED

from vggdet import Detector, build_detector, load_config
from vggdet.config import RENAMED, Config
from vggdet.training.checkpoint import (
    FORMAT_VERSION,
    CheckpointDir,
    CheckpointError,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
)
from vggdet.training.trainer import train


def test_legacy_checkpoint_is_migrated():
    raw = torch.load(LEGACY, map_location="cpu", weights_only=True)
    assert "format_version" not in raw and raw["vggdet_version"] == 1  # really the old format
    assert raw["config"]["test"]["winograd"] is False and "runtime" not in raw["config"]
    ckpt = load_checkpoint(str(LEGACY))
    assert ckpt["format_version"] == FORMAT_VERSION and "vggdet_version" not in ckpt
    cfg = Config.from_dict(ckpt["config"], source=str(LEGACY))
    # the old keys' meanings: test.winograd=False -> off, test.score_thresh -> runtime, bf16 kept
    assert (cfg.runtime.winograd, cfg.runtime.score_thresh, cfg.runtime.amp_dtype) == (False, 0.1, "bfloat16")
    assert cfg.runtime.channels_last is None and cfg.runtime.device is None and cfg.runtime.amp is False


def test_legacy_checkpoint_gives_the_same_detections():
    det = Detector.from_checkpoint(str(LEGACY), device="cpu")
    image = cv2.cvtColor(cv2.imread(str(FIXTURES / "legacy_image.png")), cv2.COLOR_BGR2RGB)
    out = det.predict(image)
    assert len(EXPECTED["labels"]) == 25  # the recorded run had detections to compare
    assert out["labels"].tolist() == EXPECTED["labels"] and out["names"] == EXPECTED["names"]
    np.testing.assert_allclose(out["boxes"], np.array(EXPECTED["boxes"]), rtol=0, atol=1e-3)
    np.testing.assert_allclose(out["scores"], np.array(EXPECTED["scores"]), rtol=0, atol=1e-5)


def test_legacy_checkpoint_in_test_and_infer_tools(legacy_shapes, tmp_path):
    r = run_tool(["tools/test_det.py", str(LEGACY), "--out", str(tmp_path / "t"), "--set", f"data.root={legacy_shapes}"])
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["mAP"] == pytest.approx(EXPECTED["test_mAP"], abs=1e-9)
    r = run_tool(["tools/infer.py", str(LEGACY), str(FIXTURES / "legacy_image.png"), "--out", str(tmp_path / "i"),
                  "--score-thr", "0.1", "--no-draw"])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "i" / "detections.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and [d["label"] for d in rows[0]["detections"]] == EXPECTED["names"]


def test_deprecated_eval_only_flag_still_evaluates(legacy_shapes, tmp_path):
    cfg = Config.from_dict(load_checkpoint(str(LEGACY))["config"])
    (tmp_path / "legacy.py").write_text(cfg.dump())  # the resolved config as a config file
    r = run_tool(["tools/train_det.py", str(tmp_path / "legacy.py"), "--eval-only", str(LEGACY), "--work-dir",
                  str(tmp_path / "w"), "--set", f"data.root={legacy_shapes}"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warning: --eval-only is deprecated" in r.stderr and "tools/test_det.py" in r.stderr
    metrics = json.loads((tmp_path / "w" / "eval" / "metrics.json").read_text())
    assert metrics["mAP"] == pytest.approx(EXPECTED["test_mAP"], abs=1e-9)


def test_training_resumes_from_legacy_checkpoint(legacy_shapes, tmp_path):
    ckpt = load_checkpoint(str(LEGACY))
    cfg = Config.from_dict(ckpt["config"], source=str(LEGACY))
    cfg.data.root, cfg.train.epochs = str(legacy_shapes), ckpt["epoch"] + 1
    per_epoch = ckpt["iteration"] // ckpt["epoch"]
    assert per_epoch == 24  # 48 images at batch 2
    train(cfg, str(tmp_path / "work"), resume=str(LEGACY))
    resumed = load_checkpoint(str(tmp_path / "work" / "latest.pth"))
    assert resumed["format_version"] == FORMAT_VERSION
    assert (resumed["epoch"], resumed["iteration"]) == (ckpt["epoch"] + 1, ckpt["iteration"] + per_epoch)
    assert resumed["optimizer"]["state"][0]["step"] > ckpt["optimizer"]["state"][0]["step"]  # AdamW state went on


def test_new_checkpoint_schema_and_newer_format(tmp_path):
    cfg = load_config(None, TINY)
    model = build_detector(cfg)
    ckpt = make_checkpoint(model, cfg, ["a", "b"], {"epoch": 2, "iteration": 10})
    save_checkpoint(str(tmp_path / "c.pth"), ckpt)
    raw = torch.load(tmp_path / "c.pth", weights_only=True)  # plain data: no pickled classes
    assert raw["format_version"] == FORMAT_VERSION and raw["classes"] == ["a", "b"] and raw["epoch"] == 2
    assert set(raw["config"]) == {"model", "data", "train", "test", "runtime", "name", "source"}
    with pytest.raises(KeyError, match="schema"):
        make_checkpoint(model, cfg, ["a", "b"], {"epochs": 2})
    save_checkpoint(str(tmp_path / "new.pth"), {**raw, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(CheckpointError, match=r"new\.pth: checkpoint format 3 is newer"):
        load_checkpoint(str(tmp_path / "new.pth"))


def test_renamed_keys_keep_working_with_a_warning(tmp_path):
    old = tmp_path / "old.py"
    old.write_text("train = dict(amp=True, channels_last=False, device='cpu')\ntest = dict(winograd=True)\n")
    with pytest.warns(FutureWarning, match="'train.amp' is deprecated; use 'runtime.amp'"):
        cfg = load_config(str(old), ["test.score_thresh=0.3"])
    r = cfg.runtime
    assert (r.amp, r.channels_last, r.device, r.winograd, r.score_thresh) == (True, None, "cpu", None, 0.3)
    for old_key, (new_key, _) in RENAMED.items():  # every row points at a key that exists
        section, name = new_key.split(".")
        assert hasattr(getattr(Config(), section), name), old_key
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(None, ["runtime.winograd=false"])  # new names: no warning


def test_checkpoint_dir_rotation_and_resume_path(tmp_path):
    ckpts = CheckpointDir(str(tmp_path), keep_last=2)
    assert ckpts.resume_path("auto") is None
    for epoch in range(1, 6):
        ckpts.save_latest({"format_version": FORMAT_VERSION, "model": {}, "epoch": epoch, "iter_in_epoch": 0})
    ckpts.save_latest({"format_version": FORMAT_VERSION, "model": {}, "epoch": 5, "iter_in_epoch": 3})  # Ctrl-C
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["epoch_4.pth", "epoch_5.pth", "latest.pth"]
    assert load_checkpoint(str(tmp_path / "epoch_5.pth"))["iter_in_epoch"] == 0
    assert ckpts.resume_path("auto") == str(tmp_path / "latest.pth")
    with pytest.raises(CheckpointError, match="weights only"):
        ckpts.load_for_resume(str(tmp_path / "latest.pth"))


def test_checkpoint_that_does_not_fit_the_config(tiny_ckpt, tmp_path, small_shapes):
    r = run_tool(["tools/test_det.py", str(tiny_ckpt), "--out", str(tmp_path / "t"), "--set", "model.num_classes=5"])
    line = one_line(r)
    assert r.returncode == 2 and "roi_head.cls_score.weight has shape (3, 128) in the checkpoint but (6, 128)" in line
    assert "model.num_classes" in line
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(str(tmp_path / "random.pth"))
    full = open(tiny_ckpt, "rb").read()
    (tmp_path / "cut.pth").write_bytes(full[: len(full) // 2])
    with pytest.raises(CheckpointError, match="cut.pth: cannot read checkpoint, truncated or corrupt"):
        load_checkpoint(str(tmp_path / "cut.pth"))


@pytest.mark.parametrize("saved,loaded,cause", [
    (["model.backbone.depth=16"], ["model.backbone.depth=19"],
     "the checkpoint is a VGG16 (13 convs); the config says model.backbone.depth=19 (16 convs) "
     "(model.backbone.depth=16 fits the checkpoint)"),
    (["model.backbone.depth=19"], ["model.backbone.depth=11"],
     "the checkpoint is a VGG19 (16 convs); the config says model.backbone.depth=11 (8 convs) "
     "(model.backbone.depth=19 fits the checkpoint)"),
    ([], ["model.backbone.batch_norm=True"],
     "the checkpoint's backbone has no batch norm layers; the config says model.backbone.batch_norm=True "
     "(model.backbone.batch_norm=False fits the checkpoint)"),
    (["model.backbone.batch_norm=True"], ["model.backbone.depth=13", "model.backbone.batch_norm=False"],
     "the checkpoint is a VGG16 (13 convs); the config says model.backbone.depth=13 (10 convs); the checkpoint's "
     "backbone has batch norm layers; the config says model.backbone.batch_norm=False "
     "(model.backbone.depth=16 model.backbone.batch_norm=True fits the checkpoint)"),
    ([], ["model.backbone.width=0.25"], "another model.backbone.width / rpn.conv_channels"),
])
def test_backbone_mismatch_names_depth_and_batch_norm(tmp_path, saved, loaded, cause):
    # #24: `--set model.backbone.depth=19` on a VGG16 checkpoint was blamed on the width / rpn.conv_channels
    from vggdet.training.checkpoint import load_detector

    cfg = load_config(None, TINY + saved)
    path = str(tmp_path / "c.pth")
    save_checkpoint(path, make_checkpoint(build_detector(cfg), cfg, ["a", "b"]))
    with pytest.raises(CheckpointError) as e:
        load_detector(path, overrides=loaded)
    line = str(e.value)
    assert line.startswith(f"{path}: ") and cause in line and "\n" not in line, line
