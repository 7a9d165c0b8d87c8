"""Training: a short run that learns, exact resume, NaN stop, signals, DDP (gloo x 2), missing data."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SHAPES_CONFIG, free_port, run_tool, tiny_train_overrides

from vggdet.config import load_config
from vggdet.errors import TrainingError
from vggdet.training.checkpoint import load_checkpoint
from vggdet.training.trainer import train


def read_log(work_dir: Path, mode: str = "train") -> list:
    lines = (work_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["mode"] == mode]


def test_short_run_learns_and_beats_chance(tmp_path):
    work = tmp_path / "work"
    # ~45 s on 2 cores; mAP 0.65 / 0.61 at seeds 0 / 1 (64 images x 8 epochs gave only 0.22)
    cfg = load_config(SHAPES_CONFIG, tiny_train_overrides(
        tmp_path, "data.shapes_num_train=96", "data.shapes_num_test=24", "model.backbone.width=0.25",
        "model.roi_head.fc_dim=256", "train.epochs=12", "train.lr_steps=[10]", "train.log_interval=8"))
    torch.manual_seed(0)
    metrics = train(cfg, str(work))
    losses = [r["loss"] for r in read_log(work)]
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses
    # 3 balanced classes: a detector that learned nothing scores ~0 AP; this one must be clearly above
    assert metrics["mAP"] > 0.3, metrics
    saved = json.loads((work / "metrics.json").read_text())
    assert saved["mAP"] == pytest.approx(metrics["mAP"]) and set(saved["per_class"]) == {"circle", "square", "triangle"}
    assert (work / "config.py").exists() and (work / "best.pth").exists()
    ckpt = load_checkpoint(str(work / "latest.pth"))
    assert ckpt["classes"] == ["circle", "square", "triangle"] and ckpt["epoch"] == 12
    assert sorted(p.name for p in work.glob("epoch_*.pth")) == ["epoch_10.pth", "epoch_11.pth", "epoch_12.pth"]
    results = list((work / "results").glob("comp4_det_*"))
    assert len(results) == 3
    # the checkpoint is all tools need: evaluate it again without a config file
    out = run_tool(["tools/test_det.py", str(work / "latest.pth"), "--out", str(tmp_path / "t"),
                    "--set", f"data.root={tmp_path / 'shapes'}"])
    assert out.returncode == 0, out.stderr
    again = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-6)


def test_resume_equals_uninterrupted_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(load_config(SHAPES_CONFIG, tiny_train_overrides(tmp_path, "train.epochs=2")), str(full))
    train(load_config(SHAPES_CONFIG, tiny_train_overrides(tmp_path, "train.epochs=1")), str(part))
    train(load_config(SHAPES_CONFIG, tiny_train_overrides(tmp_path, "train.epochs=2")), str(part), resume="auto")
    a, b = read_log(full), read_log(part)
    assert len(a) == 24  # 2 epochs x 12 batches, logged every iteration
    assert [r["iter"] for r in a] == [r["iter"] for r in b]
    for ra, rb in zip(a, b):
        for k in ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "lr"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-7), (ra["iter"], k)
    assert load_checkpoint(str(part / "latest.pth"))["iteration"] == load_checkpoint(str(full / "latest.pth"))["iteration"]


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    work = tmp_path / "work"
    train(load_config(SHAPES_CONFIG, tiny_train_overrides(tmp_path, "train.epochs=1")), str(work))
    before = (work / "latest.pth").read_bytes()
    cfg = load_config(SHAPES_CONFIG, tiny_train_overrides(tmp_path, "train.epochs=3", "train.lr=1e30",
                                                          "train.warmup_iters=0"))
    with pytest.raises(TrainingError, match=r"loss_\w+ is (nan|inf|-inf) at iteration \d+"):
        train(cfg, str(work))
    assert (work / "latest.pth").read_bytes() == before


def test_sigint_saves_latest_and_exits_130(tmp_path):
    work = tmp_path / "work"
    args = ["tools/train_det.py", SHAPES_CONFIG, "--work-dir", str(work), "--set",
            *tiny_train_overrides(tmp_path, "train.epochs=50")]
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (work / "log.jsonl").exists():
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "resume" in err
    ckpt = load_checkpoint(str(work / "latest.pth"))
    assert ckpt["iteration"] >= 1 and "optimizer" in ckpt
    assert not list(work.glob(".tmp_*"))  # no torn temp files left behind
    # resuming finishes the interrupted epoch (12 batches of 2) and no more
    epochs = ckpt["epoch"] + 1
    train(load_config(SHAPES_CONFIG, tiny_train_overrides(tmp_path, f"train.epochs={epochs}")), str(work),
          resume="auto")
    assert load_checkpoint(str(work / "latest.pth"))["iteration"] == 12 * epochs


def test_mid_epoch_start_skips_batches_unloaded():
    from vggdet.data.loader import GroupedBatchSampler, SeededSampler

    sampler = GroupedBatchSampler(SeededSampler(10, shuffle=True, seed=0), [0, 1] * 5, 2)
    sampler.set_epoch(3)
    full = list(sampler)
    assert len(full) == 5
    sampler.set_epoch(3, start=2)
    assert list(sampler) == full[2:] and len(sampler) == len(full) - 2


def test_ddp_gloo_two_processes(tmp_path):
    work = tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = run_tool(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                    "tools/train_det.py", SHAPES_CONFIG, "--work-dir", str(work), "--device", "cpu", "--set",
                    *tiny_train_overrides(tmp_path, "train.epochs=1")], env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "x2" in out.stderr + out.stdout  # the log names the world size
    ckpt = load_checkpoint(str(work / "latest.pth"))
    assert ckpt["iteration"] == 6  # 24 images / (2 per GPU x 2 processes)
    assert json.loads((work / "metrics.json").read_text())["metric"] == "voc07"


def test_missing_data_is_one_line_error(tmp_path):
    out = run_tool(["tools/train_det.py", "configs/voc_vgg16.py", "--work-dir", str(tmp_path / "w"),
                    "--set", f"data.root={tmp_path / 'nowhere'}"])
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "nowhere" in lines[0] and "--set data.root=" in lines[0], out.stderr


def test_bad_config_key_is_one_line_error(tmp_path):
    out = run_tool(["tools/train_det.py", SHAPES_CONFIG, "--set", "train.lrr=0.1"])
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "did you mean 'train.lr'" in out.stderr



def fake_evaluations(monkeypatch, maps: list) -> None:
    """The trainer's evaluations return these mAPs in turn, without predicting (fast, deterministic)."""
    import vggdet.training.trainer as trainer_module
    from vggdet.inference.dataset import Evaluation

    left = list(maps)

    def evaluate_predictor(*args, **kwargs):
        return Evaluation({"metric": "voc07", "mAP": left.pop(0),
                           "per_class": {"circle": 0.0, "square": 0.0, "triangle": 0.0}}, None, [])

    monkeypatch.setattr(trainer_module, "evaluate_predictor", evaluate_predictor)


def test_resumed_run_never_replaces_best_with_a_worse_model(tmp_path, monkeypatch):
    # #24: latest.pth / epoch_N.pth were saved before the final evaluation, so they carried the best mAP of the
    # evaluation before; a resumed run then let a worse model (0.45 < 0.56) overwrite best.pth.
    work = tmp_path / "work"
    over = tiny_train_overrides(tmp_path, "data.shapes_num_train=8", "train.eval_interval=1", "train.lr_steps=[1]",
                                "train.keep_last=5")
    fake_evaluations(monkeypatch, [0.36, 0.56])
    train(load_config(SHAPES_CONFIG, over + ["train.epochs=2"]), str(work))
    best = load_checkpoint(str(work / "best.pth"))
    assert (best["epoch"], best["best_map"]) == (2, 0.56)
    for name in ("latest.pth", "epoch_2.pth"):  # every checkpoint carries the best mAP up to its own state
        assert load_checkpoint(str(work / name))["best_map"] == 0.56, name
    assert load_checkpoint(str(work / "epoch_1.pth"))["best_map"] == 0.36
    fake_evaluations(monkeypatch, [0.45, 0.50])
    train(load_config(SHAPES_CONFIG, over + ["train.epochs=4"]), str(work), resume="auto")
    best = load_checkpoint(str(work / "best.pth"))
    assert (best["epoch"], best["best_map"]) == (2, 0.56)
    assert load_checkpoint(str(work / "latest.pth"))["best_map"] == 0.56
    # resuming from an older epoch_N.pth (best so far 0.36) does not demote best.pth either
    fake_evaluations(monkeypatch, [0.45, 0.40])
    train(load_config(SHAPES_CONFIG, over + ["train.epochs=3"]), str(work), resume=str(work / "epoch_1.pth"))
    assert load_checkpoint(str(work / "best.pth"))["best_map"] == 0.56


def test_evaluation_stopped_mid_epoch_names_that_epoch(tmp_path, monkeypatch, capsys):
    # #24: train.max_iters=10 with 4 iterations per epoch stops in epoch 3 (2 of its 4 iterations); the
    # evaluation said "after epoch 2" and recorded epoch 2.
    work = tmp_path / "work"
    fake_evaluations(monkeypatch, [0.5])
    over = tiny_train_overrides(tmp_path, "data.shapes_num_train=8", "train.epochs=5", "train.max_iters=10")
    metrics = train(load_config(SHAPES_CONFIG, over), str(work))
    out = capsys.readouterr().out
    assert "evaluation after iteration 10 (mid-epoch 3: 2 of 4 iterations; train.max_iters=10)" in out, out
    assert "after epoch 2" not in out
    (rec,) = read_log(work, "eval")
    saved = json.loads((work / "metrics.json").read_text())
    for m in (rec, saved, metrics):
        assert (m["epoch"], m["iter"], m["iter_in_epoch"]) == (3, 10, 2), m
    ckpt = load_checkpoint(str(work / "latest.pth"))
    assert (ckpt["epoch"], ckpt["iter_in_epoch"], ckpt["best_map"]) == (2, 2, 0.5)  # the resume state: unchanged
