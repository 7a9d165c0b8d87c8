"""Sliced inference (vggdet/inference/tiles.py): the tile grid, one tile = the plain prediction on both
backends, small objects found through tiles and merged once across tile borders, and the infer flag."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import FIXTURES, LEGACY, run_tool

from vggdet import load_config
from vggdet.inference import load_predictor
from vggdet.inference.base import Predictor
from vggdet.inference.tiles import drop_cut_boxes, tile_grid


@pytest.mark.parametrize("h,w,size,overlap", [(600, 1000, 512, 0.25), (2048, 1536, 256, 0.2), (300, 300, 300, 0.5),
                                              (90, 5000, 64, 0.0)])
def test_tile_grid_covers_the_image_with_tiles_inside_it(h, w, size, overlap):
    grid = tile_grid(h, w, size, overlap)
    covered = np.zeros((h, w), dtype=np.int32)
    for x0, y0, x1, y1 in grid:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert x1 - x0 == min(size, w) and y1 - y0 == min(size, h)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    if overlap and len(grid) > 1:  # neighbours share at least size * overlap (rounded) pixels
        xs = sorted({t[0] for t in grid})
        assert all(b - a <= round(size * (1 - overlap)) for a, b in zip(xs, xs[1:]))
    assert tile_grid(100, 80, 512, 0.25) == [(0, 0, 80, 100)]
    with pytest.raises(ValueError, match="test.tiles.overlap"):
        tile_grid(100, 100, 64, 1.0)


def test_boxes_cut_by_an_inner_tile_border_are_dropped_and_the_rest_mapped_back():
    det = {"boxes": np.array([[0, 0, 10, 10], [5, 5, 20, 20], [40, 30, 64, 50], [10, 63.5, 20, 64]], np.float32),
           "labels": np.array([1, 2, 1, 1]), "scores": np.array([0.9, 0.8, 0.7, 0.6], np.float32)}
    # tile (100, 0, 164, 64) of a 300 x 200 image: its left and bottom borders are inside the image, its top is
    # the image's edge, its right one too
    out = drop_cut_boxes(det, (100, 0, 164, 64), 200, 164)
    np.testing.assert_array_equal(out["boxes"], [[105, 5, 120, 20], [140, 30, 164, 50]])
    assert out["labels"].tolist() == [2, 1] and out["scores"].tolist() == pytest.approx([0.8, 0.7])


def test_one_tile_covering_the_image_is_the_plain_prediction_on_both_backends(tmp_path):
    image = cv2.cvtColor(cv2.imread(str(FIXTURES / "legacy_image.png")), cv2.COLOR_BGR2RGB)
    for path in (str(LEGACY), str(FIXTURES / "legacy_v1.onnx")):
        plain = load_predictor(path, "cpu").predict(image)
        tiled = load_predictor(path, "cpu", overrides=["test.tiles.size=512"]).predict(image)
        assert len(plain["names"]) > 20, path
        assert tiled["names"] == plain["names"]
        np.testing.assert_array_equal(tiled["boxes"], plain["boxes"])
        np.testing.assert_array_equal(tiled["scores"], plain["scores"])


class BlobPredictor(Predictor):
    """A stand-in detector with a detector's weakness: it sees the image resized to a 300-px shorter side (as
    the model's input transform does) and finds white blobs only when they are >= 6 px there."""

    backend, precision, device = "blobs", "fp32", "cpu"

    def __init__(self, tiles: str = "null"):
        self.classes = ["blob"]
        self.config = load_config(None, [f"test.tiles.size={tiles}", "model.roi_head.nms_thresh=0.3"])

    def _prepare(self, image):
        return np.ascontiguousarray(image.transpose(2, 0, 1))

    def _forward(self, inputs, proposals=None):
        return [self._blobs(x[0]) for x in inputs]

    @staticmethod
    def _blobs(gray: np.ndarray) -> dict:
        h, w = gray.shape
        s = 300 / min(h, w)
        small = cv2.resize(gray, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        n, _, stats, _ = cv2.connectedComponentsWithStats((small > 100).astype(np.uint8))
        boxes = [[x / s, y / s, (x + bw) / s, (y + bh) / s] for x, y, bw, bh, _ in stats[1:] if min(bw, bh) >= 6]
        return {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.ones(len(boxes), np.int64),
                "scores": np.full(len(boxes), 0.9, np.float32)}


def test_small_objects_are_found_through_tiles_once_each():
    rng = np.random.default_rng(0)
    canvas = np.zeros((900, 1200, 3), np.uint8)
    truth = []
    for _ in range(400):  # 14-px squares, well apart; many straddle tile borders (256-px tiles, step 192)
        x, y = rng.integers(10, 1170), rng.integers(10, 870)
        box = np.array([x, y, x + 14, y + 14], np.float32)
        if all(np.abs(box - t).max() > 40 for t in truth):
            truth.append(box)
            canvas[y:y + 14, x:x + 14] = 255
        if len(truth) == 40:
            break
    truth = np.stack(truth)
    whole = BlobPredictor().predict(canvas)["boxes"]  # 14 px -> 4.7 px at 300/900: below what it can see
    tiled = BlobPredictor(tiles="256").predict(canvas)["boxes"]  # 256 -> 300: 16 px, seen in every tile
    assert len(truth) == 40 and len(whole) < 4

    def matches(boxes):  # truth index of each box (IoU > 0.7), -1 for none
        x1, y1 = np.maximum(boxes[:, None, :2], truth[None, :, :2]).transpose(2, 0, 1)
        x2, y2 = np.minimum(boxes[:, None, 2:], truth[None, :, 2:]).transpose(2, 0, 1)
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        iou = inter / (196 * 2 - inter)
        return np.where(iou.max(1) > 0.7, iou.argmax(1), -1)

    m = matches(tiled)
    assert (m >= 0).all() and sorted(m.tolist()) == list(range(40))  # every square once, nothing else
    assert len({tuple(t) for t in tile_grid(900, 1200, 256, 0.25)}) == 30


def test_infer_tiles_flag_and_bad_values(tmp_path, tiny_ckpt):
    cv2.imwrite(str(tmp_path / "big.png"), np.random.default_rng(1).integers(0, 255, (300, 420, 3), dtype=np.uint8))
    r = run_tool(["tools/infer.py", str(tiny_ckpt), str(tmp_path / "big.png"), "--tiles", "160,0.2", "--out",
                  str(tmp_path / "o"), "--score-thr", "0", "--no-draw"])
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads((tmp_path / "o" / "detections.jsonl").read_text())
    assert record["width"] == 420 and record["detections"]
    for bad in ("8", "160,1.5", "abc", "160,0.2,3"):
        r = run_tool(["tools/infer.py", str(tiny_ckpt), str(tmp_path / "big.png"), "--tiles", bad])
        assert r.returncode == 2 and "argument --tiles: expected SIZE" in r.stderr.splitlines()[-1], (bad, r.stderr)


def test_the_server_answers_tiled_detections():
    """The server's batched path (vggdet/serve/service.py) gives the tiled predictor's detections."""
    httpx = pytest.importorskip("httpx", reason="the server tests need httpx (test extra)")
    pytest.importorskip("fastapi", reason="the server needs the serve extra")
    import asyncio

    from vggdet.serve import DetectionService, ServeSettings, create_app

    rng = np.random.default_rng(1)
    canvas = np.zeros((700, 900, 3), np.uint8)
    for x, y in rng.integers(10, 680, (12, 2)):
        canvas[y:y + 14, x:x + 14] = 255
    want = BlobPredictor(tiles="256").predict(canvas)
    service = DetectionService(BlobPredictor(tiles="256"), ServeSettings())
    service.warm_up()

    async def ask():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)), base_url="http://t") as c:
            body = cv2.imencode(".png", canvas)[1].tobytes()
            return (await c.post("/v1/detect", content=body, headers={"content-type": "image/png"})).json()

    try:
        got = asyncio.run(ask())
    finally:
        service.close()
    assert len(got["detections"]) == len(want["boxes"]) > 5
    np.testing.assert_allclose(sorted(d["box"] for d in got["detections"]),
                               sorted(np.round(want["boxes"], 2).tolist()), atol=0.011)
