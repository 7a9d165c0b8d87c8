"""Faults a long training must survive: SIGKILL anywhere (checkpoint writes included), a full disk, a corrupt
latest.pth, a data-loader worker that dies. Each ends in one clear line and a resumable work folder."""
from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from datetime import datetime

import torch
from conftest import ROOT, SHAPES_CONFIG, run_tool, tiny_train_overrides

from vggdet.data.shapes import ensure_shapes
from vggdet.training.checkpoint import load_checkpoint


def small_run(tmp_path, *extra: str) -> list:
    """4 iterations per epoch (8 images at batch 2): checkpoints every ~second, often hit by a kill."""
    over = tiny_train_overrides(tmp_path, "data.shapes_num_train=8", "data.shapes_num_test=4", *extra)
    ensure_shapes(str(tmp_path / "shapes"), 8, 4, 128, 0)  # generated up front: not what is tested here
    return over


def train_args(work, over: list) -> list:
    return ["tools/train_det.py", SHAPES_CONFIG, "--work-dir", str(work), "--resume", "auto", "--set", *over]


def error_line(r) -> str:
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def _lines(path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_sigkill_anywhere_then_resume_equals_an_unkilled_run(tmp_path):
    over = small_run(tmp_path, "train.epochs=8", "train.keep_last=2")
    work, reference = tmp_path / "killed", tmp_path / "reference"
    rng = random.Random(0)
    log = work / "log.jsonl"
    for _ in range(20):
        done = _lines(log)
        proc = subprocess.Popen([sys.executable, *train_args(work, over)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # kill after 1..6 more iterations (an epoch is 4, then a checkpoint write) plus a random moment
        target, deadline = done + rng.randint(1, 6), time.time() + 300
        while proc.poll() is None and time.time() < deadline and _lines(log) < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # whatever moment the kill hit, every file under a checkpoint's name is complete (a write cut short
        # stays a `.tmp_*` file, which nothing reads)
        for path in work.glob("*.pth"):
            if not path.name.startswith(".tmp_"):
                load_checkpoint(str(path))
    saved = load_checkpoint(str(work / "latest.pth"))
    assert saved["epoch"] >= 1  # the kills did let it make progress
    finished = run_tool(train_args(work, over))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert not list(work.glob(".tmp_*"))  # the restart removed what the kills left half-written
    clean = run_tool(train_args(reference, over))
    assert clean.returncode == 0, clean.stderr[-3000:]
    a, b = load_checkpoint(str(work / "latest.pth")), load_checkpoint(str(reference / "latest.pth"))
    assert (a["epoch"], a["iteration"]) == (b["epoch"], b["iteration"]) == (8, 32)
    for key, value in b["model"].items():  # SIGKILL never saves mid-epoch: resumes are at epoch boundaries
        torch.testing.assert_close(a["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path):
    over = small_run(tmp_path, "train.epochs=1")
    work = tmp_path / "w"
    assert run_tool(train_args(work, over)).returncode == 0
    before = (work / "latest.pth").read_bytes()
    limit = len(before) // 2  # RLIMIT_FSIZE: any file write past this fails with EFBIG, like a full disk

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run([sys.executable, *train_args(work, over + ["train.epochs=2"])], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, preexec_fn=small_files)
    line = error_line(r)
    assert r.returncode == 1 and "latest.pth: cannot write the checkpoint" in line and "intact" in line, line
    assert (work / "latest.pth").read_bytes() == before
    assert not list(work.glob(".tmp_*"))


def test_corrupt_latest_names_the_newest_intact_epoch(tmp_path):
    over = small_run(tmp_path, "train.epochs=2", "train.keep_last=2")
    work = tmp_path / "w"
    assert run_tool(train_args(work, over)).returncode == 0
    latest = work / "latest.pth"
    latest.write_bytes(latest.read_bytes()[:5000])  # truncated
    r = run_tool(train_args(work, over + ["train.epochs=3"]))
    line = error_line(r)
    assert r.returncode == 2 and "latest.pth: cannot read checkpoint, truncated or corrupt" in line
    assert line.endswith(f"--resume {work / 'epoch_2.pth'}"), line
    args = train_args(work, over + ["train.epochs=3"])
    args[args.index("auto")] = str(work / "epoch_2.pth")
    r = run_tool(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_checkpoint(str(latest))["epoch"] == 3
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert len(records) > 8 and all(datetime.fromisoformat(r["time"]).tzinfo for r in records)  # wall clock, UTC


def test_resume_with_a_config_that_does_not_fit_is_one_line(tmp_path):
    over = small_run(tmp_path, "train.epochs=1")
    work = tmp_path / "w"
    assert run_tool(train_args(work, over)).returncode == 0
    r = run_tool(train_args(work, over + ["train.epochs=2", "model.roi_head.fc_dim=64"]))
    line = error_line(r)
    assert r.returncode == 2 and "latest.pth: roi_head.fc6.weight has shape (128, 3136) in the checkpoint but (64, 3136)" in line
    assert "fc_dim" in line


def _children(pid: int) -> list:
    path = f"/proc/{pid}/task/{pid}/children"
    return [int(c) for c in open(path).read().split()] if os.path.exists(path) else []


def test_dead_data_loader_worker_is_one_line_and_keeps_the_checkpoint(tmp_path):
    over = small_run(tmp_path, "train.epochs=200", "data.num_workers=1")
    work = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, *train_args(work, over)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (work / "epoch_1.pth").exists():
        time.sleep(0.2)
    workers = _children(proc.pid)
    while not workers and time.time() < deadline:  # workers live while an epoch runs
        time.sleep(0.05)
        workers = _children(proc.pid)
    assert workers, "no data-loader worker process found"
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1, err[-3000:]
    assert "DataLoader worker" in lines[0] and "--resume auto" in lines[0]
    assert load_checkpoint(str(work / "latest.pth"))["epoch"] >= 1
