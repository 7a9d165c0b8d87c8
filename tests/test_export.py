"""ONNX export and the onnxruntime predictor: parity with PyTorch over many image sizes and batches,
the tools on a .onnx file, and one-line errors for files and options that cannot work.

Tolerances (the issue's): same count, same labels, boxes within 0.5 px, scores within 1e-3. The model is
the legacy fixture checkpoint (a trained tiny VGG, tests/fixtures/README.md), so there are detections
to compare; measured differences are ~1e-4 px and ~1e-6.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import FIXTURES, LEGACY, LEGACY_EXPECTED, run_tool

onnx = pytest.importorskip("onnx", reason="the export extra is not installed: pip install -e '.[export]'")
ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")

from vggdet import Detector  # noqa: E402
from vggdet.deploy.export import ExportError, export_onnx  # noqa: E402
from vggdet.inference.onnx_backend import OnnxModelError, OnnxPredictor  # noqa: E402

BOX_TOL, SCORE_TOL = 0.5, 1e-3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The legacy checkpoint exported through the tool (dynamic batch, uint8 input)."""
    out = tmp_path_factory.mktemp("onnx") / "legacy.onnx"
    r = run_tool(["tools/export.py", str(LEGACY), "--out", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote" in r.stdout and out.stat().st_size > 100_000
    return out


@pytest.fixture(scope="module")
def torch_det():
    return Detector.from_checkpoint(str(LEGACY), device="cpu")


def _rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def images(shared_data, legacy_shapes):
    """Images of >= 10 sizes and aspect ratios: generated shapes, real BCCD / COCO128 photos (when the
    shared data is there), a 64x64, a 1000x200, a portrait one and one with nothing on it."""
    shape = _rgb(FIXTURES / "legacy_image.png")
    test_ids = (legacy_shapes / "ImageSets" / "Main" / "test.txt").read_text().split()
    other = _rgb(legacy_shapes / "JPEGImages" / f"{test_ids[1]}.jpg")
    out = {"shapes_128": shape, "shapes_b": other, "64x64": np.ascontiguousarray(shape[:64, :64]),
           "1000x200": cv2.resize(shape, (1000, 200)), "portrait_150x400": cv2.resize(other, (150, 400)),
           "odd_203x77": cv2.resize(shape, (203, 77)), "blank": np.full((240, 320, 3), 127, np.uint8),
           "tiny_17x23": cv2.resize(shape, (23, 17))}
    bccd = shared_data / "bccd" / "VOCdevkit" / "VOC2007" / "JPEGImages"
    coco = shared_data / "coco128" / "train2017"
    for folder, n in ((bccd, 1), (coco, 4)):
        for p in sorted(folder.glob("*.jpg"))[:n] if folder.is_dir() else []:
            out[p.name] = _rgb(p)
    if len(out) < 12:  # without the shared data: more generated sizes instead of the photos
        out.update({f"shapes_{w}x{h}": cv2.resize(other, (w, h)) for w, h in ((640, 480), (300, 500), (97, 311))})
    return out


def assert_same(ref: dict, got: dict, what: str) -> None:
    assert len(got["boxes"]) == len(ref["boxes"]), f"{what}: {len(got['boxes'])} vs {len(ref['boxes'])} detections"
    assert got["labels"].tolist() == ref["labels"].tolist(), what
    if len(ref["boxes"]):
        np.testing.assert_allclose(got["boxes"], ref["boxes"], rtol=0, atol=BOX_TOL, err_msg=what)
        np.testing.assert_allclose(got["scores"], ref["scores"], rtol=0, atol=SCORE_TOL, err_msg=what)


def test_onnx_equals_pytorch_at_batch_1_over_many_sizes(exported, torch_det, images):
    det = Detector.from_checkpoint(str(exported))
    assert isinstance(det, OnnxPredictor) and det.classes == torch_det.classes
    sizes = {im.shape[:2] for im in images.values()}
    assert len(sizes) >= 10
    counts = {}
    for name, im in images.items():
        ref, got = torch_det.predict(im), det.predict(im)
        assert_same(ref, got, name)
        assert got["names"] == ref["names"]
        counts[name] = len(ref["boxes"])
    assert counts["blank"] == 0 and counts["shapes_128"] == len(LEGACY_EXPECTED["labels"])
    assert sum(c > 0 for c in counts.values()) >= 5  # the comparison is not between empty lists


def test_onnx_batch_gives_each_image_its_own_detections(exported, torch_det, images, legacy_shapes):
    """A batch of one size: every image gets its detections, in order, equal to PyTorch on the same batch."""
    ids = (legacy_shapes / "ImageSets" / "Main" / "test.txt").read_text().split()[:4]
    batch = [_rgb(legacy_shapes / "JPEGImages" / f"{i}.jpg") for i in ids] + [images["blank"][:128, :128]]
    det = OnnxPredictor(str(exported))
    ref, got = torch_det.predict_batch(batch), det.predict_batch(batch)
    for k, (r, g) in enumerate(zip(ref, got)):
        assert_same(r, g, f"batch image {k}")
    assert len(got[-1]["boxes"]) == 0 and sum(len(g["boxes"]) for g in got) > 10
    # the raw graph: one run over [5,3,H,W]; image_index groups the rows in image order
    x = np.stack([b.transpose(2, 0, 1) for b in batch])
    boxes, labels, scores, index = det.session.run(None, {"images": x})
    assert index.tolist() == sorted(index.tolist())
    for k, r in enumerate(ref):
        assert (index == k).sum() == len(r["boxes"])
        np.testing.assert_allclose(boxes[index == k], r["boxes"], atol=BOX_TOL)
    # mixed sizes through predict_batch: split by size like the PyTorch predictor
    mixed = [images["64x64"], batch[0], images["1000x200"], batch[1]]
    for k, (r, g) in enumerate(zip(torch_det.predict_batch(mixed), det.predict_batch(mixed))):
        assert_same(r, g, f"mixed batch image {k}")


def test_metadata_carries_classes_config_and_version(exported, torch_det):
    model = onnx.load(str(exported))
    meta = {p.key: p.value for p in model.metadata_props}
    import vggdet

    assert json.loads(meta["classes"]) == torch_det.classes
    assert meta["vggdet_version"] == vggdet.__version__ and json.loads(meta["config"])["model"]["num_classes"] >= 1
    ops = {n.op_type for n in model.graph.node}
    assert {"Resize", "NonMaxSuppression", "MaxRoiPool", "TopK", "Conv"} <= ops
    inp = model.graph.input[0].type.tensor_type
    assert inp.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param for d in inp.shape.dim] == ["batch", "", "height", "width"]


def test_test_and_infer_tools_run_the_onnx_file(exported, legacy_shapes, tmp_path):
    r = run_tool(["tools/test_det.py", str(exported), "--out", str(tmp_path / "t"), "--report", "--set",
                  f"data.root={legacy_shapes}"])
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["mAP"] == pytest.approx(LEGACY_EXPECTED["test_mAP"], abs=0.0005)  # 0.05 points
    assert (tmp_path / "t" / "report" / "report.html").is_file()  # the error analysis works on .onnx too
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (128, 128))
    frame = cv2.imread(str(FIXTURES / "legacy_image.png"))
    for _ in range(3):
        writer.write(frame)
    writer.release()
    r = run_tool(["tools/infer.py", str(exported), str(FIXTURES / "legacy_image.png"), str(video), "--out",
                  str(tmp_path / "i"), "--score-thr", "0.1"])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "i" / "detections.jsonl").read_text().splitlines()]
    assert [d["label"] for d in rows[0]["detections"]] == LEGACY_EXPECTED["names"]
    frames = [json.loads(line) for line in (tmp_path / "i" / "clip.jsonl").read_text().splitlines()]
    assert len(frames) == 3 and all(len(f["detections"]) > 0 for f in frames)


def test_svd_fp16_roialign_and_fixed_batch_exports(tmp_path, torch_det, images):
    im = images["shapes_128"]
    ref = torch_det.predict(im)
    svd = export_onnx(str(LEGACY), str(tmp_path / "svd.onnx"), svd=(8, 8))
    full = export_onnx(str(LEGACY), str(tmp_path / "full.onnx"))
    half = export_onnx(str(LEGACY), str(tmp_path / "half.onnx"), fp16=True)
    assert svd["bytes"] < full["bytes"] and half["bytes"] < 0.6 * full["bytes"]
    got = OnnxPredictor(str(tmp_path / "half.onnx")).predict(im)
    assert_same(ref, got, "fp16 weights")  # fp16 storage, fp32 compute: still within the tolerance here
    # SVD: equal to the PyTorch model with the same factored layers
    from vggdet.deploy.svd import compress_checkpoint

    compress_checkpoint(str(LEGACY), 8, 8, str(tmp_path / "svd.pth"))
    assert_same(Detector.from_checkpoint(str(tmp_path / "svd.pth"), device="cpu").predict(im),
                OnnxPredictor(str(tmp_path / "svd.onnx")).predict(im), "svd 8,8")
    # RoIAlign (opset 16 RoiAlign) and class-agnostic NMS, through --set overrides on both sides
    over = ["model.roi_head.pool=align", "model.roi_head.class_agnostic_nms=true"]
    export_onnx(str(LEGACY), str(tmp_path / "align.onnx"), overrides=over, batch_size=2)
    assert {"RoiAlign"} <= {n.op_type for n in onnx.load(str(tmp_path / "align.onnx")).graph.node}
    ref = Detector.from_checkpoint(str(LEGACY), device="cpu", overrides=over).predict_batch([im, im, im])
    got = OnnxPredictor(str(tmp_path / "align.onnx")).predict_batch([im, im, im])  # fixed batch 2: 2 + 1 padded
    assert len(ref[0]["boxes"]) > 0
    for r, g in zip(ref, got):
        assert_same(r, g, "roi align, batch 2")


def test_bad_files_and_options_are_one_line_errors(tmp_path, exported, monkeypatch):
    plain = tmp_path / "plain.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(plain))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(exported.read_bytes()[:5000])
    cases = [(plain, "not a vggdet export"), (corrupt, "not a readable ONNX model"),
             (tmp_path / "missing.onnx", "no such ONNX file")]
    for path, msg in cases:
        r = run_tool(["tools/infer.py", str(path), str(FIXTURES / "legacy_image.png"), "--out", str(tmp_path / "o")])
        assert r.returncode == 2 and msg in r.stderr and str(path) in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_tool(["tools/test_det.py", str(exported), "--set", "model.roi_head.nms_thresh=0.5"])
    assert r.returncode == 2 and "model.roi_head.nms_thresh is fixed in an ONNX export" in r.stderr
    r = run_tool(["tools/infer.py", str(exported), str(FIXTURES / "legacy_image.png"), "--tta", "--out",
                  str(tmp_path / "o")])
    assert r.returncode == 2 and "test.tta.hflip is fixed" in r.stderr
    for args, msg in ((["--opset", "9"], "--opset 9"), (["--set", "model.roi_head.nms=soft_linear"],
                                                          "model.roi_head.nms='soft_linear' cannot be exported"),
                      (["--opset", "15", "--set", "model.roi_head.pool=align"], "needs opset >= 16"),
                      (["--set", "model.proposals=external"], "model.proposals='external' cannot be exported"),
                      (["--svd", "8"], "expected R6,R7")):
        r = run_tool(["tools/export.py", str(LEGACY), "--out", str(tmp_path / "x.onnx"), *args])
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
        assert not (tmp_path / "x.onnx").exists()
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(OnnxModelError, match=r"pip install 'vggdet\[export\]'"):
        OnnxPredictor(str(exported))
    with pytest.raises(ExportError, match="rank"):
        export_onnx(str(LEGACY), str(tmp_path / "y.onnx"), svd=(10**6, None))


@pytest.mark.parametrize("name", ["legacy_v1.onnx", "legacy_v1_int8.onnx"])
def test_exports_of_the_previous_main_give_the_same_detections(name):
    """Files exported (and quantized) by main before the inference package moved (tests/fixtures/README.md)
    load through today's predictor and give the recorded detections."""
    expected = json.loads((FIXTURES / "legacy_onnx_expected.json").read_text())[name]
    image = _rgb(FIXTURES / "legacy_image.png")
    inputs = {"image": image, "image_and_mirror": np.ascontiguousarray(np.concatenate([image, image[:, ::-1]], 1))}
    predictor = Detector.from_checkpoint(str(FIXTURES / name), device="cpu")
    assert predictor.backend == "onnxruntime" and predictor.precision == ("int8" if "int8" in name else "fp32")
    for key, im in inputs.items():
        got, want = predictor.predict(im), expected[key]
        assert len(want["labels"]) > 20 and got["names"] == want["names"], key
        np.testing.assert_allclose(got["boxes"], np.array(want["boxes"]), rtol=0, atol=1e-3)
        np.testing.assert_allclose(got["scores"], np.array(want["scores"]), rtol=0, atol=1e-5)


def test_export_score_cutoff_is_recorded_and_a_lower_threshold_warns_once(tmp_path, exported):
    low = tmp_path / "low.onnx"
    r = run_tool(["tools/export.py", str(LEGACY), "--out", str(low), "--score-thr", "0.02"])
    assert r.returncode == 0 and "score cut-off 0.02" in r.stdout, r.stderr[-2000:]
    assert json.loads(OnnxPredictor(str(low)).metadata["score_thresh"]) == pytest.approx(0.02)
    image = _rgb(FIXTURES / "legacy_image.png")
    default = OnnxPredictor(str(exported))  # the checkpoint's cut-off: runtime.score_thresh = 0.1
    assert default.min_score == pytest.approx(0.1)
    with pytest.warns(UserWarning, match=r"scores below 0.1 are cut inside the model.*--score-thr 0.02") as w:
        few = default.predict(image, score_thresh=0.02)
        default.predict(image, score_thresh=0.02)
    assert len(w) == 1
    more = OnnxPredictor(str(low)).predict(image, score_thresh=0.02)
    assert len(more["scores"]) > len(few["scores"]) and (few["scores"] >= 0.1).all()
    r = run_tool(["tools/export.py", str(LEGACY), "--out", str(low), "--score-thr", "2"])
    assert r.returncode == 2 and "--score-thr must be in [0, 1]" in r.stderr
