"""Inference on files: input discovery, images and videos with a tiny random model, the CLI and bad inputs."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, run_tool

from vggdet import build_detector, load_config
from vggdet.inference.images import collect_inputs, output_names, run_images
from vggdet.inference.torch_backend import Detector
from vggdet.inference.video import run_video
from vggdet.training.checkpoint import save_checkpoint

# Fewer proposals and detections than the defaults keep the random model fast on two CPU cores.
FAST = ["model.rpn.pre_nms_top_n_test=500", "model.rpn.post_nms_top_n_test=50",
        "model.roi_head.detections_per_img=10"]
CLASSES = ["circle", "square"]
LOW = ["--score-thr", "0"]  # a random model scores ~1/3: keep everything so there is something to check
N_FRAMES, FPS, VW, VH = 40, 10.0, 128, 96


def _write_video(path: str, n: int = N_FRAMES) -> None:
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), FPS, (VW, VH))
    for i in range(n):
        frame = np.full((VH, VW, 3), 40, np.uint8)
        cv2.circle(frame, (20 + 2 * i, 48), 15, (0, 0, 255), -1)
        w.write(frame)
    w.release()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Checkpoints (embedded config and bare), a config file, images (+ a corrupt one) and a video."""
    d = tmp_path_factory.mktemp("infer")
    cfg = load_config(None, TINY + FAST)
    torch.manual_seed(0)
    model = build_detector(cfg)
    save_checkpoint(str(d / "full.pt"), {"model": model.state_dict(), "config": cfg.to_dict(), "classes": CLASSES})
    save_checkpoint(str(d / "bare.pt"), {"model": model.state_dict()})
    sections = {}
    for item in TINY + FAST:  # the same settings as a config file of dicts
        key, value = item.split("=", 1)
        node = sections
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = eval(value)
    (d / "tiny.py").write_text("".join(f"{k} = {v!r}\n" for k, v in sections.items()))
    rng = np.random.default_rng(0)
    (d / "imgs" / "sub").mkdir(parents=True)
    cv2.imwrite(str(d / "imgs" / "a.jpg"), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    cv2.imwrite(str(d / "imgs" / "gray.png"), rng.integers(0, 255, (100, 140), dtype=np.uint8))
    cv2.imwrite(str(d / "imgs" / "sub" / "a.jpg"), rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    (d / "imgs" / "bad.jpg").write_bytes(b"not a jpeg at all" * 20)
    _write_video(str(d / "clip.mp4"))
    det = Detector.from_checkpoint(str(d / "full.pt"), device="cpu", overrides=["runtime.score_thresh=0.0"])
    return d, det


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/infer.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def _jsonl(path) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f]


def _no_temp_files(out) -> None:
    leftovers = [f for _, _, files in os.walk(out) for f in files if f.startswith(".tmp_")]
    assert leftovers == []


def _assert_inside(dets: list, w: int, h: int) -> None:
    assert dets, "no detections to check"  # with --score-thr 0 the random model always has some
    for d in dets:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h, d
        assert d["label"] in CLASSES and 0 <= d["score"] <= 1


def _video_props(path: str) -> tuple:
    cap = cv2.VideoCapture(path)
    props = (int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS),
             int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return props, n


# ------------------------------------------------------------------------------------ input discovery
def test_collect_inputs_folders_globs_videos_missing(env):
    d, _ = env
    images, videos, missing = collect_inputs([str(d / "imgs"), str(d / "imgs" / "*.jpg"), str(d / "*.mp4"),
                                              str(d / "nothing*.png"), str(d / "absent.jpg")])
    names = sorted(os.path.relpath(p, d) for p in images)
    assert names == ["imgs/a.jpg", "imgs/bad.jpg", "imgs/gray.png", "imgs/sub/a.jpg"]  # no duplicates
    assert videos == [str(d / "clip.mp4")]
    assert missing == [str(d / "nothing*.png"), str(d / "absent.jpg")]


def test_output_names_never_clash():
    names = output_names(["x/a.jpg", "y/a.jpg", "x/sub/a.jpg"])
    assert names == {"x/a.jpg": "x/a.jpg", "y/a.jpg": "y/a.jpg", "x/sub/a.jpg": "x/sub/a.jpg"}
    videos = output_names(["v/a.mp4", "v/a.avi", "v/detections.mkv"], strip_ext=True, reserved=("detections",))
    assert sorted(videos.values()) == ["a", "a_1", "detections_1"]


# --------------------------------------------------------------------------------- library, in-process
def test_run_images_writes_annotated_copies_and_jsonl(env, tmp_path):
    d, det = env
    paths = [str(d / "imgs" / "a.jpg"), str(d / "imgs" / "gray.png"), str(d / "imgs" / "sub" / "a.jpg")]
    stats = run_images(det, paths, str(tmp_path), score_thr=0.0, batch=2, progress=False)
    assert stats.images == 3 and not stats.failed
    rows = _jsonl(tmp_path / "detections.jsonl")
    assert [r["file"] for r in rows] == paths
    assert [(r["width"], r["height"]) for r in rows] == [(160, 120), (140, 100), (128, 96)]
    assert sum(len(r["detections"]) for r in rows) > 0
    for r in rows:
        _assert_inside(r["detections"], r["width"], r["height"])
    for name, shape in [("a.jpg", (120, 160, 3)), ("gray.png", (100, 140, 3)), ("sub/a.jpg", (96, 128, 3))]:
        assert cv2.imread(str(tmp_path / name)).shape == shape
    # --classes and --score-thr filter what is written: compare with the unfiltered detections of one image.
    run_images(det, paths[:1], str(tmp_path / "all"), score_thr=0.0, draw=False, progress=False)
    every = _jsonl(tmp_path / "all" / "detections.jsonl")[0]["detections"]
    assert every and 0.3 < min(x["score"] for x in every) and max(x["score"] for x in every) < 0.5  # ~1/3
    kept = {}
    for name in CLASSES:
        run_images(det, paths[:1], str(tmp_path / name), score_thr=0.3, keep={name}, draw=False, progress=False)
        kept[name] = _jsonl(tmp_path / name / "detections.jsonl")[0]["detections"]
        assert kept[name] == [x for x in every if x["label"] == name]
        assert all(x["label"] == name and x["score"] >= 0.3 for x in kept[name])
    assert sum(map(len, kept.values())) == len(every)
    assert sorted(os.listdir(tmp_path / "circle")) == ["detections.jsonl"]
    run_images(det, paths[:1], str(tmp_path / "high"), score_thr=0.5, draw=False, progress=False)
    assert _jsonl(tmp_path / "high" / "detections.jsonl")[0]["detections"] == []
    _no_temp_files(tmp_path)


def test_run_video_keeps_frames_size_rate(env, tmp_path):
    d, det = env
    stats = run_video(det, str(d / "clip.mp4"), str(tmp_path), score_thr=0.0, batch=4, every=2, progress=False)
    assert not stats.failed and stats.frames == N_FRAMES and stats.frame_model_n == N_FRAMES // 2
    (count, fps, w, h), n = _video_props(str(tmp_path / "clip.mp4"))
    assert (count, n, w, h) == (N_FRAMES, N_FRAMES, VW, VH) and fps == pytest.approx(FPS)
    rows = _jsonl(tmp_path / "clip.jsonl")
    assert [r["frame"] for r in rows] == list(range(N_FRAMES))
    assert rows[3]["time"] == pytest.approx(3 / FPS)
    assert any(r["detections"] for r in rows)
    for r in rows:
        _assert_inside(r["detections"], VW, VH)
    # the processed frames differ (the disc moves), and the frames between repeat the last processed one's
    assert len({json.dumps(rows[i]["detections"]) for i in range(0, N_FRAMES, 2)}) > 1
    for i in range(1, N_FRAMES, 2):
        assert rows[i]["detections"] == rows[i - 1]["detections"]
    _no_temp_files(tmp_path)


def test_video_every_covers_a_partial_last_batch(env, tmp_path):
    d, det = env
    _write_video(str(tmp_path / "short.mp4"), n=11)
    stats = run_video(det, str(tmp_path / "short.mp4"), str(tmp_path / "out"), score_thr=0.0, batch=3, every=4,
                      progress=False)
    rows = _jsonl(tmp_path / "out" / "short.jsonl")
    assert stats.frame_model_n == 3 and len(rows) == 11 == _video_props(str(tmp_path / "out" / "short.mp4"))[1]
    processed = [rows[i]["detections"] for i in (0, 4, 8)]
    assert all(processed) and processed[0] != processed[1] != processed[2]
    for i in (1, 2, 3, 5, 6, 7, 9, 10):  # 9-10: the last, partial group
        assert rows[i]["detections"] == rows[i - i % 4]["detections"]


def test_crashed_or_corrupt_video_leaves_no_output(env, tmp_path):
    """A crash mid-video never leaves a torn file under a final name (Ctrl-C keeps the finished frames:
    test_interrupted_video_keeps_the_finished_frames)."""
    d, det = env

    class Crashing:
        classes = det.classes

        def __init__(self):
            self.calls = 0

        def predict_batch(self, images, *args):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("the model crashed")
            return det.predict_batch(images, *args)

    with pytest.raises(RuntimeError, match="crashed"):
        run_video(Crashing(), str(d / "clip.mp4"), str(tmp_path), batch=2, progress=False)
    (tmp_path / "broken.mp4").write_bytes(b"\x00garbage" * 100)
    stats = run_video(det, str(tmp_path / "broken.mp4"), str(tmp_path / "out"), progress=False)
    assert len(stats.failed) == 1 and "broken.mp4" in stats.failed[0]
    assert sorted(os.listdir(tmp_path)) == ["broken.mp4"]  # no clip.mp4/.jsonl, no temp files


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_embedded_config_images_video_and_bad_inputs(env, tmp_path):
    d, _ = env
    out = tmp_path / "out"
    r = _cli(str(d / "full.pt"), str(d / "imgs"), str(d / "clip.mp4"), str(d / "nothing*.jpg"),
             "--out", str(out), *LOW, "--batch", "2", "--every", "8")
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert any("bad.jpg" in e for e in errors) and any("nothing*.jpg" in e for e in errors)
    rows = _jsonl(out / "detections.jsonl")
    assert sorted(os.path.relpath(x["file"], d) for x in rows) == ["imgs/a.jpg", "imgs/gray.png", "imgs/sub/a.jpg"]
    assert os.path.isfile(out / "sub" / "a.jpg") and os.path.isfile(out / "a.jpg")
    assert len(_jsonl(out / "clip.jsonl")) == N_FRAMES and _video_props(str(out / "clip.mp4"))[1] == N_FRAMES
    assert "ms per image" in r.stdout and "ms per frame" in r.stdout and "detections: " in r.stdout
    _no_temp_files(out)


def _main_in_process(capsys, *args: str) -> tuple:
    """tools/infer.py's main() without a new interpreter (the error paths; saves seconds of imports)."""
    spec = importlib.util.spec_from_file_location("infer_tool", os.path.join(ROOT, "tools", "infer.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    code = tool.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_bare_checkpoint_needs_config(env, tmp_path, capsys):
    d, _ = env
    code, _, err = _main_in_process(capsys, str(d / "bare.pt"), str(d / "imgs" / "a.jpg"), "--out", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "CONFIG" in err and "bare.pt" in err
    r = _cli(str(d / "tiny.py"), str(d / "bare.pt"), str(d / "imgs" / "a.jpg"), "--out", str(tmp_path / "y"),
             "--no-draw", "--set", "model.roi_head.score_thresh=0.0", "--score-thr", "0.1")
    assert r.returncode == 0, r.stderr
    assert os.listdir(tmp_path / "y") == ["detections.jsonl"]
    assert len(_jsonl(tmp_path / "y" / "detections.jsonl")) == 1
    assert "class1" in r.stdout or "class2" in r.stdout  # no names in a bare checkpoint


def test_cli_nothing_to_do_and_unknown_class(env, tmp_path, capsys):
    d, _ = env
    code, _, err = _main_in_process(capsys, str(d / "full.pt"), str(d / "nope*.jpg"), "--out", str(tmp_path))
    assert code == 2 and "nope*.jpg" in err
    code, _, err = _main_in_process(capsys, str(d / "full.pt"), str(d / "imgs" / "a.jpg"),
                                    "--classes", "circle,triangle", "--out", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "triangle" in err
    code, _, err = _main_in_process(capsys, str(d / "tiny.py"), str(d / "missing.pt"), str(d / "imgs"),
                                    "--out", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "missing.pt" in err
    assert os.listdir(tmp_path) == []


def test_torchrun_two_processes_write_what_one_process_writes(env, tmp_path):
    """Images in shards and whole videos per process; one detections.jsonl in input order, each output once."""
    d, _ = env
    from conftest import free_port

    args = [str(d / "full.pt"), str(d / "imgs"), str(d / "clip.mp4"), *LOW, "--every", "8", "--format", "coco"]
    one = _cli(*args, "--out", str(tmp_path / "one"))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), "tools/infer.py", *args, "--out", str(tmp_path / "two"), "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == run.returncode == 1, run.stderr[-3000:]  # bad.jpg fails in both
    assert run.stderr.count("bad.jpg") == 1  # reported once, by the process that had it
    for name in ("detections.jsonl", "detections_coco.json", "clip.jsonl"):
        a, b = (tmp_path / "one" / name).read_text(), (tmp_path / "two" / name).read_text()
        assert len(a) > 100 and a == b, name
    files = sorted(str(p.relative_to(tmp_path / "one")) for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(tmp_path / "two")) for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert "images: 3" in run.stdout and "videos: 1" in run.stdout


def _video(path, n=30):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (128, 96))
    for i in range(n):
        frame = np.full((96, 128, 3), 40, np.uint8)
        cv2.circle(frame, (20 + 3 * i, 48), 15, (0, 0, 255), -1)
        w.write(frame)
    w.release()


def _frames(path) -> int:
    cap, n = cv2.VideoCapture(str(path)), 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.mark.parametrize("how", ["sigint", "exception"])
def test_interrupted_video_keeps_the_finished_frames(tiny_ckpt, tmp_path, how):
    det = Detector.from_checkpoint(str(tiny_ckpt), device="cpu")

    class CtrlC:
        classes = det.classes
        calls = 0

        def predict_batch(self, images, *args):
            self.calls += 1
            if self.calls == 3:  # mid-video: Ctrl-C as a signal, or raised inside the model
                if how == "exception":
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signal.SIGINT)
            return det.predict_batch(images, *args)

    _video(tmp_path / "clip.mp4")
    stats = run_video(CtrlC(), str(tmp_path / "clip.mp4"), str(tmp_path / "out"), batch=2, progress=False)
    done = 6 if how == "sigint" else 4  # the batch in flight at a signal still completes
    rows = [json.loads(line) for line in (tmp_path / "out" / "clip.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(done)) and stats.frames == done
    assert _frames(tmp_path / "out" / "clip.mp4") == done  # a playable video up to the same frame
    assert f"complete up to frame {done}" in stats.interrupted
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".tmp_")]


def test_broken_video_is_one_line_without_ffmpeg_noise(tiny_ckpt, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00garbage" * 100)
    r = run_tool(["tools/infer.py", str(tiny_ckpt), str(tmp_path / "broken.mp4"), "--out", str(tmp_path / "o")])
    assert r.returncode == 1 and r.stderr.count("broken.mp4") == 1, r.stderr
    assert "moov" not in r.stderr and "[mov" not in r.stderr


def test_infer_coco_format_and_no_pin_memory_warning(tiny_ckpt, tmp_path):
    img = tmp_path / "imgs" / "000000000042.jpg"
    img.parent.mkdir()
    cv2.imwrite(str(img), np.random.default_rng(2).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    r = run_tool(["tools/infer.py", str(tiny_ckpt), str(img.parent), "--out", str(tmp_path / "o"), "--score-thr", "0",
                  "--format", "coco", "--no-draw"])
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "o" / "detections_coco.json").read_text())
    jsonl = json.loads((tmp_path / "o" / "detections.jsonl").read_text())
    assert len(rows) == len(jsonl["detections"]) > 0
    assert {r["image_id"] for r in rows} == {42} and {r["category_id"] for r in rows} <= {1, 2}
    x1, y1, x2, y2 = jsonl["detections"][0]["box"]
    assert rows[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.011)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from vggdet.data import build_dataloader

        cfg = load_config(None, TINY + ["data.format=shapes", f"data.root={tmp_path / 's'}", "data.shapes_num_train=2",
                                        "data.shapes_num_test=2", "data.shapes_size=64", "data.num_workers=0"])
        if not torch.cuda.is_available():  # pin_memory=True (the default) must not warn without a GPU
            next(iter(build_dataloader(cfg, "test", False)))


def test_every_counts_keyframe_detections_and_a_range_of_frames(env, tmp_path):
    """--every N: the summary counts the detections the model made (repeated boxes of skipped frames are
    not new ones); --start-frame / --max-frames: a range of a long clip, numbered as in the source."""
    d, det = env
    stats = run_video(det, str(d / "clip.mp4"), str(tmp_path / "a"), score_thr=0.0, every=4, progress=False)
    rows = _jsonl(tmp_path / "a" / "clip.jsonl")
    keyframe_dets = sum(len(rows[i]["detections"]) for i in range(0, N_FRAMES, 4))
    assert sum(stats.per_class.values()) == keyframe_dets < sum(len(r["detections"]) for r in rows)
    r = _cli(str(d / "full.pt"), str(d / "clip.mp4"), "--out", str(tmp_path / "b"), "--start-frame", "25",
             "--max-frames", "10", "--every", "3", *LOW)
    assert r.returncode == 0, r.stderr
    rows = _jsonl(tmp_path / "b" / "clip.jsonl")
    assert [x["frame"] for x in rows] == list(range(25, 35)) and rows[0]["time"] == pytest.approx(25 / FPS)
    assert _video_props(str(tmp_path / "b" / "clip.mp4"))[1] == 10
    assert "videos: 1 (10 frames)" in r.stdout and "4 of 10 frames through the model" in r.stdout
    r = _cli(str(d / "full.pt"), str(d / "clip.mp4"), "--out", str(tmp_path / "c"), "--start-frame", "500")
    assert r.returncode == 1 and "--start-frame past its end" in r.stderr
    assert _cli(str(d / "full.pt"), str(d / "clip.mp4"), "--max-frames", "0").returncode == 2


def test_ctrl_c_during_images_keeps_the_finished_records(env, tmp_path):
    d, det = env
    images = [str(d / "imgs" / "a.jpg"), str(d / "imgs" / "sub" / "a.jpg"), str(d / "imgs" / "gray.png")] * 2

    class CtrlCOnThird:
        classes, calls = det.classes, 0

        def predict_batch(self, batch, *args):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return det.predict_batch(batch, *args)

    from vggdet.inference.images import run_inputs

    stats = run_inputs(CtrlCOnThird(), images, [], str(tmp_path / "out"), score_thr=0.0, batch=1, draw=False)
    assert "holds the 2 finished images of 6" in stats.interrupted
    rows = _jsonl(tmp_path / "out" / "detections.jsonl")
    assert [r["file"] for r in rows] == images[:2] and all(r["detections"] for r in rows)
    _no_temp_files(tmp_path / "out")


def test_rerun_skips_its_own_output_folder_inside_the_inputs(env, tmp_path):
    d, _ = env
    shutil.copytree(d / "imgs", tmp_path / "imgs")
    out = tmp_path / "imgs" / "annotated"
    for _ in range(2):
        r = _cli(str(d / "full.pt"), str(tmp_path / "imgs"), "--out", str(out), *LOW)
        assert r.returncode == 1 and "images: 3 " in r.stdout, r.stdout + r.stderr  # bad.jpg fails, nothing else
    assert len(_jsonl(out / "detections.jsonl")) == 3
    images, _, _ = collect_inputs([str(tmp_path / "imgs"), str(tmp_path / "imgs" / "**" / "*.jpg")], skip=str(out))
    assert not [p for p in images if "annotated" in p] and len(images) == 4


def test_format_yolo_writes_label_files_that_match_the_jsonl(env, tmp_path):
    d, _ = env
    r = _cli(str(d / "full.pt"), str(d / "imgs" / "a.jpg"), str(d / "imgs" / "sub" / "a.jpg"), "--out",
             str(tmp_path / "o"), "--format", "yolo", "--no-draw", *LOW)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "classes.txt").read_text().split() == CLASSES
    for rec in _jsonl(tmp_path / "o" / "detections.jsonl"):
        name = os.path.relpath(rec["file"], d / "imgs")
        lines = (tmp_path / "o" / "labels" / name.replace(".jpg", ".txt")).read_text().splitlines()
        assert len(lines) == len(rec["detections"]) > 0
        w, h = rec["width"], rec["height"]
        for line, det in zip(lines, rec["detections"]):
            c, cx, cy, bw, bh, score = line.split()
            assert CLASSES[int(c)] == det["label"] and float(score) == pytest.approx(det["score"], abs=1e-4)
            box = [(float(cx) - float(bw) / 2) * w, (float(cy) - float(bh) / 2) * h,
                   (float(cx) + float(bw) / 2) * w, (float(cy) + float(bh) / 2) * h]
            assert box == pytest.approx(det["box"], abs=1e-3 * max(w, h))


def test_list_files_name_images_relative_to_the_list(env, tmp_path, capsys):
    d, _ = env
    (tmp_path / "list.txt").write_text(f"# images\n{d / 'imgs' / 'a.jpg'}\n\nrel/x.png\n{d / 'imgs' / 'a.jpg'}\n"
                                       "s3://bucket/y.jpg\n")
    images, videos, missing = collect_inputs([str(tmp_path / "list.txt"), str(d / "imgs" / "gray.png")])
    assert images == [str(d / "imgs" / "a.jpg"), str(tmp_path / "rel" / "x.png"), "s3://bucket/y.jpg",
                      str(d / "imgs" / "gray.png")] and not videos and not missing
    assert output_names(["s3://bucket/a/y.jpg", "s3://bucket/b/y.jpg"]) == \
        {"s3://bucket/a/y.jpg": "a/y.jpg", "s3://bucket/b/y.jpg": "b/y.jpg"}
    # a URI is read through pyarrow's filesystems on Ray only; a listed file that is not there fails by name
    code, _, err = _main_in_process(capsys, str(d / "full.pt"), str(tmp_path / "list.txt"), "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and "s3://bucket/y.jpg: a URI" in err and "--ray" in err
    (tmp_path / "local.txt").write_text(f"{d / 'imgs' / 'a.jpg'}\nmissing.jpg\n")
    code, out, err = _main_in_process(capsys, str(d / "full.pt"), str(tmp_path / "local.txt"), "--out",
                                      str(tmp_path / "o"), "--no-draw")
    assert code == 1 and "images: 1 " in out and f"{tmp_path / 'missing.jpg'}: image file not found" in err
