"""int8: tools/quantize.py on a tiny trained model (the legacy fixture), its detections against fp32, the
`runtime.precision` rules and the one-line errors."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import FIXTURES, LEGACY, LEGACY_EXPECTED, run_tool

pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")
onnx = pytest.importorskip("onnx", reason="the export extra is not installed: pip install -e '.[export]'")

from torchvision.ops import box_iou  # noqa: E402

from vggdet import Detector  # noqa: E402
from vggdet.inference.onnx_backend import OnnxModelError, OnnxPredictor, _check_int8_device  # noqa: E402
from vggdet.runtime import cpu_flags  # noqa: E402


@pytest.fixture(scope="module")
def int8(tmp_path_factory, legacy_shapes):
    out = tmp_path_factory.mktemp("int8") / "legacy_int8"
    r = run_tool(["tools/quantize.py", str(LEGACY), "--out", str(out), "--calib", "12", "--set",
                  f"data.root={legacy_shapes}"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "calibrated on 12 images" in r.stdout
    return out.with_suffix(".onnx")


def _matched(ref: dict, got: dict, min_score: float) -> float:
    """Fraction of fp32 detections above `min_score` with an int8 detection of the same label at IoU > 0.7."""
    import torch

    keep = ref["scores"] > min_score
    if not keep.any():
        return 1.0
    iou = box_iou(torch.from_numpy(ref["boxes"][keep]), torch.from_numpy(got["boxes"]))
    same = torch.from_numpy(ref["labels"][keep])[:, None] == torch.from_numpy(got["labels"])[None]
    return float(((iou > 0.7) & same).any(1).float().mean())


def test_int8_model_loads_everywhere_and_stays_close_to_fp32(int8, legacy_shapes, tmp_path):
    model = onnx.load(str(int8))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["precision"] == "int8" and json.loads(meta["config"])["runtime"]["precision"] == "int8"
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") >= 2 * 15  # weights and activations of the 13 convs, rpn conv, fc6/7
    det = Detector.from_checkpoint(str(int8))
    assert isinstance(det, OnnxPredictor) and det.precision == "int8"
    ref = Detector.from_checkpoint(str(LEGACY), device="cpu")
    image = cv2.cvtColor(cv2.imread(str(FIXTURES / "legacy_image.png")), cv2.COLOR_BGR2RGB)
    got, want = det.predict(image), ref.predict(image)
    assert len(want["boxes"]) == 25 and abs(len(got["boxes"]) - 25) <= 8
    assert _matched(want, got, 0.3) >= 0.8
    np.testing.assert_allclose(np.sort(got["scores"])[-5:], np.sort(want["scores"])[-5:], atol=0.1)
    r = run_tool(["tools/test_det.py", str(int8), "--out", str(tmp_path / "t"), "--set", f"data.root={legacy_shapes}"])
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert abs(metrics["mAP"] - LEGACY_EXPECTED["test_mAP"]) < 0.03  # a weak model: mAP 2.2 %
    r = run_tool(["tools/infer.py", str(int8), str(FIXTURES / "legacy_image.png"), "--out", str(tmp_path / "i"),
                  "--score-thr", "0.1", "--no-draw"])
    assert r.returncode == 0, r.stderr[-2000:]


def test_svd_checkpoint_and_calibration_folder(tmp_path, legacy_shapes):
    from vggdet.deploy.svd import compress_checkpoint

    compress_checkpoint(str(LEGACY), 8, 8, str(tmp_path / "svd.pth"))
    r = run_tool(["tools/quantize.py", str(tmp_path / "svd.pth"), "--out", str(tmp_path / "svd_int8.onnx"),
                  "--calib", "3", "--calib-images", str(legacy_shapes / "JPEGImages")])
    assert r.returncode == 0, r.stderr[-2000:]
    model = onnx.load(str(tmp_path / "svd_int8.onnx"))
    quantized = {n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.name.startswith("/fc")}
    assert len(quantized) >= 4  # fc6 and fc7 as two factors each
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["calibration_images"] == "3" and json.loads(meta["svd"]) is None
    out = OnnxPredictor(str(tmp_path / "svd_int8.onnx")).predict(np.zeros((128, 128, 3), np.uint8))
    assert set(out) >= {"boxes", "labels", "scores", "names"}


def test_precision_rules_and_errors(int8, tmp_path):
    r = run_tool(["tools/test_det.py", str(int8), "--set", "runtime.precision=fp32"])
    assert r.returncode == 2 and "runtime.precision=fp32 but this export is int8" in r.stderr
    r = run_tool(["tools/test_det.py", str(int8), "--set", "test.precision=fp32"])  # the 0.1 key: one rule
    assert r.returncode == 2 and "'test.precision' is deprecated; use 'runtime.precision'" in r.stderr
    assert "runtime.precision=fp32 but this export is int8" in r.stderr
    r = run_tool(["tools/test_det.py", str(LEGACY), "--set", "runtime.precision=int8"])
    assert r.returncode == 2 and "python tools/quantize.py" in r.stderr
    r = run_tool(["tools/infer.py", str(LEGACY), str(FIXTURES / "legacy_image.png"), "--out", str(tmp_path / "o"),
                  "--set", "runtime.precision=bf16"])
    if {"avx512_bf16", "amx_bf16"} & cpu_flags():
        assert r.returncode == 0, r.stderr[-2000:]
    else:
        assert r.returncode == 2 and "has no native bf16" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(OnnxModelError, match="runs on the CPU"):
        _check_int8_device(str(int8), "cuda")
    (tmp_path / "empty").mkdir()
    cases = [(["--calib-images", str(tmp_path / "empty")], "no images there"),
             (["--set", "data.format=voc", f"data.root={tmp_path / 'nothing'}"], "no calibration images"),
             (["--calib", "0"], "at least one calibration image")]
    for args, msg in cases:
        r = run_tool(["tools/quantize.py", str(LEGACY), "--out", str(tmp_path / "q"), *args])
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "q.onnx").exists()
    r = run_tool(["tools/quantize.py", str(int8), "--out", str(tmp_path / "q")])
    assert r.returncode == 2 and "quantize the checkpoint (.pth)" in r.stderr
