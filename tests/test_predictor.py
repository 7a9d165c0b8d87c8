"""The predictor interface (vggdet/inference/base.py) on both backends: the score / class filter, the input
rules, batches that change speed and never detections, and the backend description."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import run_tool

from vggdet import Detector


def test_score_threshold_and_predict_inputs(tiny_ckpt, tmp_path):
    r = run_tool(["tools/infer.py", str(tiny_ckpt), str(tmp_path), "--score-thr", "1.5"])
    assert r.returncode == 2 and "--score-thr must be in [0, 1]" in r.stderr
    det = Detector.from_checkpoint(str(tiny_ckpt), device="cpu", overrides=["runtime.score_thresh=0.0"])
    img = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    every, high = det.predict(img), det.predict(img, score_thresh=0.4)
    assert len(every["scores"]) > len(high["scores"]) and (high["scores"] >= 0.4).all()
    assert len(high["names"]) == len(high["scores"])
    with pytest.raises(TypeError, match="use predict_batch"):
        det.predict([img, img])


def test_batch_size_changes_speed_not_detections(tiny_ckpt):
    det = Detector.from_checkpoint(str(tiny_ckpt), device="cpu", overrides=["runtime.score_thresh=0.0"])
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((96, 128), (160, 90), (96, 128), (70, 70))]
    batched = det.predict_batch(images)
    assert sum(len(d["scores"]) for d in batched) > 10
    for image, b in zip(images, batched):
        one = det.predict(image)
        assert b["labels"].tolist() == one["labels"].tolist()
        np.testing.assert_allclose(b["boxes"], one["boxes"], rtol=0, atol=1e-3)
        np.testing.assert_allclose(b["scores"], one["scores"], rtol=0, atol=1e-5)


def test_both_backends_share_the_interface_filter_and_description(tiny_ckpt, tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")
    from vggdet.deploy.export import export_onnx
    from vggdet.inference import load_predictor

    export_onnx(str(tiny_ckpt), str(tmp_path / "tiny.onnx"), overrides=["runtime.score_thresh=0.0"])
    img = np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    results = {}
    for path in (str(tiny_ckpt), str(tmp_path / "tiny.onnx")):
        with load_predictor(path, "cpu", overrides=["runtime.score_thresh=0.0"]) as p:
            d = p.describe()
            assert d["backend"] == p.backend and d["precision"] == "fp32" and d["classes"] == ["circle", "square"]
            assert d["input"]["resize"] == "shorter side to 128, longer side at most 256" and d["version"]
            every = p.predict(img)
            name = every["names"][0]  # the top detection's class
            cut = float(np.median(every["scores"][every["labels"] == every["labels"][0]]))
            some = p.predict(img, score_thresh=cut, classes=name)
            assert len(every["names"]) > len(some["names"]) > 0
            assert set(some["names"]) == {name} and (some["scores"] >= cut).all()
            assert (some["labels"] == every["labels"][0]).all() and some["boxes"].shape == (len(some["names"]), 4)
            with pytest.raises(ValueError, match=r"unknown class name\(s\) zebra \(known: circle, square\)"):
                p.predict(img, classes={"zebra"})
            results[p.backend] = every
    assert set(results) == {"pytorch", "onnxruntime"}
    a, b = results["pytorch"], results["onnxruntime"]
    assert a["names"] == b["names"]
    np.testing.assert_allclose(a["boxes"], b["boxes"], rtol=0, atol=0.5)
