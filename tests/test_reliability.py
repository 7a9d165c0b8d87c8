"""What a new user hit: empty splits, output permissions and folders, interrupted videos, mismatched
checkpoints, noisy or silent warnings, batch-dependent detections; each as one clear line."""
from __future__ import annotations

import json
import os
import signal
import stat
import warnings

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY, run_tool

from vggdet import Detector, build_detector, load_config
from vggdet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vggdet.data import DataError, VOCDetection, make_shapes
from vggdet.evaluation import EvalError, evaluate_voc
from vggdet.fileio import write_json
from vggdet.video import run_video

FAST = ["model.rpn.pre_nms_top_n_test=500", "model.rpn.post_nms_top_n_test=50", "model.roi_head.detections_per_img=10"]
CLASSES = ["circle", "square"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel")
    cfg = load_config(None, TINY + FAST)
    torch.manual_seed(0)
    save_checkpoint(str(d / "tiny.pt"), {"model": build_detector(cfg).state_dict(), "config": cfg.to_dict(),
                                         "classes": CLASSES})
    return d / "tiny.pt"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(str(tmp_path_factory.mktemp("rel") / "voc"), "voc", 8, 4, 128, seed=3)


def one_line(r) -> str:
    lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------ empty data
def test_empty_split_stops_with_the_split_file(tmp_path, shapes):
    split = os.path.join(shapes, "ImageSets", "Main", "empty.txt")
    open(split, "w").close()
    with pytest.raises(DataError, match=r"empty\.txt: the split is empty"):
        VOCDetection(shapes, "empty", classes=["circle", "square", "triangle"])
    cfg = tmp_path / "c.py"
    cfg.write_text(f"model = dict(num_classes=3)\ndata = dict(format='voc', root={shapes!r}, "
                   "train_sets=[['.', 'empty']], test_sets=[['.', 'test']], classes=['circle', 'square', 'triangle'])\n")
    r = run_tool(["tools/train_det.py", str(cfg), "--work-dir", str(tmp_path / "w")])
    assert r.returncode == 2 and "empty.txt: the split is empty" in one_line(r)
    assert not list((tmp_path / "w").glob("*.pth"))


def test_evaluation_without_any_ground_truth_is_an_error():
    gt = [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)} for _ in range(3)]
    dets = [{"boxes": np.array([[0, 0, 5, 5.0]]), "labels": np.array([1]), "scores": np.array([0.9])}] * 3
    with pytest.raises(EvalError, match="no class has .* ground truth in the 3 test image"):
        evaluate_voc(gt, dets, ["a", "b"])


# ------------------------------------------------------------------------------------- output files
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_mode_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json(str(tmp_path / "m.json"), {"a": 1})
        save_checkpoint(str(tmp_path / "c.pth"), {"model": {}})
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    want = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert want == 0o666 & ~umask
    for name in ("m.json", "c.pth"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == want, name


@pytest.mark.parametrize("tool,flag", [("infer", "--out"), ("train_det", "--work-dir"), ("test_det", "--out")])
def test_unwritable_output_folder_fails_before_loading(tmp_path, tool, flag):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32, 3), np.uint8))
    args = {"infer": [str(tmp_path / "missing.pt"), str(tmp_path / "a.png")],
            "train_det": ["configs/shapes_tiny.py"], "test_det": [str(tmp_path / "missing.pt")]}[tool]
    r = run_tool([f"tools/{tool}.py", *args, flag, str(blocker / "out")])
    # the checkpoint does not exist either: the output folder is checked first, before anything loads
    assert r.returncode == 2 and f"{flag} {blocker / 'out'}: cannot write there" in one_line(r)


# ---------------------------------------------------------------------------------- interrupted video
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
def test_interrupted_video_keeps_the_finished_frames(ckpt, tmp_path, how):
    det = Detector.from_checkpoint(str(ckpt), device="cpu")

    class CtrlC:
        classes = det.classes
        calls = 0

        def predict_batch(self, images):
            self.calls += 1
            if self.calls == 3:  # mid-video: Ctrl-C as a signal, or raised inside the model
                if how == "exception":
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signal.SIGINT)
            return det.predict_batch(images)

    _video(tmp_path / "clip.mp4")
    stats = run_video(CtrlC(), str(tmp_path / "clip.mp4"), str(tmp_path / "out"), batch=2, progress=False)
    done = 6 if how == "sigint" else 4  # the batch in flight at a signal still completes
    rows = [json.loads(line) for line in (tmp_path / "out" / "clip.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(done)) and stats.frames == done
    assert _frames(tmp_path / "out" / "clip.mp4") == done  # a playable video up to the same frame
    assert f"complete up to frame {done}" in stats.interrupted
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".tmp_")]


def test_broken_video_is_one_line_without_ffmpeg_noise(ckpt, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00garbage" * 100)
    r = run_tool(["tools/infer.py", str(ckpt), str(tmp_path / "broken.mp4"), "--out", str(tmp_path / "o")])
    assert r.returncode == 1 and r.stderr.count("broken.mp4") == 1, r.stderr
    assert "moov" not in r.stderr and "[mov" not in r.stderr


# ---------------------------------------------------------------------------------- wrong checkpoints
def test_checkpoint_that_does_not_fit_the_config(ckpt, tmp_path, shapes):
    r = run_tool(["tools/test_det.py", str(ckpt), "--out", str(tmp_path / "t"), "--set", "model.num_classes=5"])
    line = one_line(r)
    assert r.returncode == 2 and "roi_head.cls_score.weight has shape (3, 128) in the checkpoint but (6, 128)" in line
    assert "model.num_classes" in line
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(str(tmp_path / "random.pth"))
    full = open(ckpt, "rb").read()
    (tmp_path / "cut.pth").write_bytes(full[: len(full) // 2])
    with pytest.raises(CheckpointError, match="cut.pth: cannot read checkpoint, truncated or corrupt"):
        load_checkpoint(str(tmp_path / "cut.pth"))


# --------------------------------------------------------------------------------- warnings and flags
def test_degenerate_boxes_warning_names_images_and_why(tmp_path, shapes):
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(shapes, root)
    first = (root / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    xml = root / "Annotations" / f"{first}.xml"
    text = xml.read_text()
    xmin = text.split("<xmin>")[1].split("<")[0]
    xml.write_text(text.replace(f"<xmax>{text.split('<xmax>')[1].split('<')[0]}</xmax>", f"<xmax>{xmin}</xmax>", 1))
    with pytest.warns(UserWarning, match=rf"dropped 1 degenerate box\(es\): {first} \(zero area as annotated\)"):
        VOCDetection(str(root), "test", classes=["circle", "square", "triangle"])


def test_eval_det_warns_when_most_images_have_no_detections(tmp_path, shapes):
    ds = VOCDetection(shapes, "test", classes=["circle", "square", "triangle"])
    assert len(ds) == 4
    from vggdet.evaluation import write_voc_results

    ann = ds.get_annotation(0)
    dets = [{"boxes": ann["boxes"], "labels": ann["labels"], "scores": np.ones(len(ann["labels"]))}]
    dets += [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64), "scores": np.zeros(0)}] * 3
    write_voc_results(str(tmp_path / "res"), "test", ds.classes, ds.image_ids, dets)
    r = run_tool(["tools/eval_det.py", "--voc-root", shapes, "--split", "test", "--results", str(tmp_path / "res"),
                  "--classes", "circle,square,triangle"])
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stderr and "3 of 4 images have no detections at all" in r.stderr


def test_score_threshold_and_predict_inputs(ckpt, tmp_path):
    r = run_tool(["tools/infer.py", str(ckpt), str(tmp_path), "--score-thr", "1.5"])
    assert r.returncode == 2 and "--score-thr must be in [0, 1]" in r.stderr
    det = Detector.from_checkpoint(str(ckpt), device="cpu", overrides=["runtime.score_thresh=0.0"])
    img = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    every, high = det.predict(img), det.predict(img, score_thresh=0.4)
    assert len(every["scores"]) > len(high["scores"]) and (high["scores"] >= 0.4).all()
    assert len(high["names"]) == len(high["scores"])
    with pytest.raises(TypeError, match="use predict_batch"):
        det.predict([img, img])


def test_batch_size_changes_speed_not_detections(ckpt):
    det = Detector.from_checkpoint(str(ckpt), device="cpu", overrides=["runtime.score_thresh=0.0"])
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((96, 128), (160, 90), (96, 128), (70, 70))]
    batched = det.predict_batch(images)
    assert sum(len(d["scores"]) for d in batched) > 10
    for image, b in zip(images, batched):
        one = det.predict(image)
        assert b["labels"].tolist() == one["labels"].tolist()
        np.testing.assert_allclose(b["boxes"], one["boxes"], rtol=0, atol=1e-3)
        np.testing.assert_allclose(b["scores"], one["scores"], rtol=0, atol=1e-5)


def test_infer_coco_format_and_no_pin_memory_warning(ckpt, tmp_path):
    img = tmp_path / "imgs" / "000000000042.jpg"
    img.parent.mkdir()
    cv2.imwrite(str(img), np.random.default_rng(2).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    r = run_tool(["tools/infer.py", str(ckpt), str(img.parent), "--out", str(tmp_path / "o"), "--score-thr", "0",
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
