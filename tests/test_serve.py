"""The HTTP server (vggdet/serve/, tools/serve.py): the API against tools/infer.py and the predictor, bad
input and load, a full queue, the batcher, the API key, SIGTERM, video streams, and the page in a real
browser (headless Chromium driven by Playwright; skipped when no Chromium is installed).

Servers are real: a `tools/serve.py` subprocess, or uvicorn in a thread around a gated fake predictor where a
test must hold the model still. All bind 127.0.0.1 on a free port; every request loop is bounded in count
and time; each server is stopped by its pid (or its flag) in a finally / fixture teardown.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FIXTURES, LEGACY, ROOT, free_port

pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="the server tests need httpx (test extra)")

from vggdet.data.errors import DataError  # noqa: E402
from vggdet.data.image_io import decode_image  # noqa: E402
from vggdet.inference import load_predictor  # noqa: E402
from vggdet.inference.base import Predictor  # noqa: E402
from vggdet.inference.outputs import detection_record  # noqa: E402
from vggdet.serve import DetectionService, ServeSettings, create_app  # noqa: E402
from vggdet.serve.batcher import Batcher, QueueFull  # noqa: E402

LEGACY_IMAGE = FIXTURES / "legacy_image.png"


# ------------------------------------------------------------------------------------------------ helpers
class Server:
    """`python tools/serve.py MODEL ARGS` on 127.0.0.1:<free port>, its output in `log`; stop() by pid."""

    def __init__(self, model, *args, tmp: Path, env: dict = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server_{self.port}.log"
        self.tmp = tmp / f"tmp_{self.port}"  # the server's TMPDIR: its video temp files land here
        self.tmp.mkdir()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "tools/serve.py", str(model), "--port", str(self.port), *args],
                                         cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "TMPDIR": str(self.tmp), **(env or {})})
        deadline = time.monotonic() + 180
        while "serving " not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server did not start:\n{self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)


def png_bytes(image_rgb: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(image_rgb[:, :, ::-1]))
    assert ok
    return buf.tobytes()


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random RGB image with a few bright blobs (so the RPN proposes something)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(3):
        y, x, r = rng.integers(10, h - 10), rng.integers(10, w - 10), int(rng.integers(6, 20))
        cv2.circle(img, (int(x), int(y)), r, tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
    return img


def png_declaring(w: int, h: int) -> bytes:
    """A PNG whose header says w x h (a decompression bomb if it were decoded), with a little data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 20000)) + chunk(b"IEND", b""))


def same_record(got: dict, want: dict) -> None:
    """Equal records, up to one rounding step: the server batches same-size images into one forward,
    which moves boxes by ~1e-5 px (float summation order), enough to flip a 0.01-px rounding now and then."""
    assert (got["file"], got["width"], got["height"]) == (want["file"], want["width"], want["height"])
    order = lambda dets: sorted(dets, key=lambda d: (d["label"], d["box"]))  # noqa: E731 (near-tied scores may swap)
    got_dets, want_dets = order(got["detections"]), order(want["detections"])
    assert [d["label"] for d in got_dets] == [d["label"] for d in want_dets], (got, want)
    for a, b in zip(got_dets, want_dets):
        assert np.allclose(a["box"], b["box"], atol=0.0101) and abs(a["score"] - b["score"]) <= 1.01e-4, (a, b)


def raw_post(port: int, path: str, ctype: str, body: bytes, declared: int = None, close_after: bool = False):
    """A POST over a plain socket: `declared` Content-Length (default len(body)); `close_after`: send the
    body and hang up without reading (a client that disconnects mid-upload)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body) if declared is None else declared}\r\nConnection: close\r\n\r\n")
    s.sendall(head.encode() + body)
    if close_after:
        s.close()
        return None
    return s


def read_response(s: socket.socket) -> tuple:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def legacy_server(tmp_path_factory):
    """The legacy trained shapes model (real detections), default limits."""
    server = Server(LEGACY, tmp=tmp_path_factory.mktemp("legacy_server"))
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory, tiny_ckpt):
    """The tiny random model with small limits: 1 MB bodies, 1 Mpx images, batches of 4."""
    server = Server(tiny_ckpt, "--max-upload-mb", "1", "--max-pixels", "1000000", "--max-batch", "4",
                    tmp=tmp_path_factory.mktemp("tiny_server"))
    yield server
    assert server.stop() == 0


# ------------------------------------------------------------------------------------------------ the API
def test_answers_are_infer_py_records(legacy_server, tmp_path):
    r = subprocess.run([sys.executable, "tools/infer.py", str(LEGACY), str(LEGACY_IMAGE), "--score-thr", "0.15",
                        "--no-draw", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    want = json.loads((tmp_path / "detections.jsonl").read_text())
    want["file"] = "legacy_image.png"
    assert len(want["detections"]) >= 5  # a real model: real detections at 0.15
    data = LEGACY_IMAGE.read_bytes()
    with httpx.Client(base_url=legacy_server.url, timeout=60) as c:
        one = c.post("/v1/detect", params={"score_thr": 0.15}, files={"image": ("legacy_image.png", data, "image/png")})
        raw = c.post("/v1/detect?score_thr=0.15", content=data, headers={"Content-Type": "image/png"})
    assert one.status_code == raw.status_code == 200
    got = one.json()
    assert set(got["time_ms"]) == {"queue", "model", "total"} and got["time_ms"]["total"] >= got["time_ms"]["model"]
    del got["time_ms"]
    assert got == want  # one image, batch of one: the very numbers infer.py writes
    assert raw.json()["file"] == "" and raw.json()["detections"] == want["detections"]


def test_endpoints_classes_several_images_and_errors(legacy_server):
    data = LEGACY_IMAGE.read_bytes()
    with httpx.Client(base_url=legacy_server.url, timeout=60) as c:
        assert c.get("/healthz").json() == {"status": "ok", "in_flight": 0}
        assert c.get("/readyz").json() == {"status": "ready"}
        info = c.get("/v1/model").json()
        assert info["classes"] == ["circle", "square", "triangle"] and info["backend"] == "pytorch"
        assert {"precision", "input", "version", "min_score", "limits"} <= set(info)
        # several image fields -> results in upload order, each its own record; a path-like name is only echoed
        files = [("image", ("a.png", data, "image/png")), ("image", ("../../etc/passwd", data, "image/png"))]
        several = c.post("/v1/detect", params={"score_thr": 0.15}, files=files).json()["results"]
        assert [r["file"] for r in several] == ["a.png", "../../etc/passwd"]
        assert several[0]["detections"] == several[1]["detections"]
        circles = c.post("/v1/detect", params={"score_thr": 0.15, "classes": "circle"},
                         files={"image": ("a.png", data)}).json()["detections"]
        assert circles == [d for d in several[0]["detections"] if d["label"] == "circle"] and circles
        schema = c.get("/openapi.json").json()
        assert {"/v1/detect", "/v1/detect/video", "/v1/model", "/healthz", "/readyz"} <= set(schema["paths"])
        assert "swagger" in c.get("/docs").text.lower()
        cases = [(c.post("/v1/detect", params={"score_thr": 1.5}, files={"image": ("a.png", data)}), 400, "score_thr"),
                 (c.post("/v1/detect", params={"classes": "dog"}, files={"image": ("a.png", data)}), 400, "dog"),
                 (c.post("/v1/detect", files={"picture": ("a.png", data)}), 400, "'image' field"),
                 (c.post("/v1/detect", content=data, headers={"Content-Type": "text/plain"}), 415, "text/plain"),
                 (c.post("/v1/detect", files={"image": ("notes.txt", b"hello")}), 415, "notes.txt"),
                 (c.get("/v1/detect"), 405, "GET"), (c.get("/nothing/here"), 404, "/nothing/here"),
                 (c.get("/static/../setup.cfg"), 404, "not found")]
        for r, status, words in cases:
            assert r.status_code == status and words in r.json()["error"], (r.status_code, r.text)
            assert list(r.json()) == ["error"] and "\n" not in r.json()["error"]


def test_200_mixed_requests_each_get_their_status(tiny_server, tiny_ckpt):
    """Good images among 0-byte bodies, random bytes, truncated JPEGs, a PNG declaring 30000x30000, a wrong
    content type, oversized bodies (declared and chunked) and clients that hang up mid-upload, from 16
    concurrent clients: every request its status, no 5xx, every good answer the predictor's, and the server
    still ready afterwards."""
    rng = np.random.default_rng(0)
    good = {f"g{k}.{ext}": png_bytes(photo(h, w, k), "." + ext)
            for k, (h, w, ext) in enumerate([(96, 128, "png"), (128, 128, "jpg"), (80, 200, "png"), (96, 128, "jpg")])}
    jpeg = png_bytes(photo(120, 160, 9), ".jpg")
    truncated = jpeg[: len(jpeg) // 2]
    predictor = load_predictor(str(tiny_ckpt), device="cpu")
    want = {name: detection_record(name, *decode_image(b, name).shape[1::-1], predictor.predict(decode_image(b, name)))
            for name, b in good.items()}
    try:
        decode_image(truncated, "t")
        want["cut.jpg"] = detection_record("cut.jpg", 160, 120, predictor.predict(decode_image(truncated, "t")))
    except DataError:
        pass
    big = rng.integers(0, 256, 1_200_000, dtype=np.uint8).tobytes()
    noise = [rng.bytes(3000) for _ in range(20)]  # made here: a Generator is not for several threads

    def chunked():
        for k in range(0, len(big), 65536):
            yield big[k:k + 65536]

    def good_one(c, k):
        name = list(good)[k % len(good)]
        return c.post("/v1/detect", files={"image": (name, good[name])})

    kinds = [
        ("good", good_one, 200),
        ("empty", lambda c, k: c.post("/v1/detect", content=b"", headers={"Content-Type": "image/png"}), 400),
        ("random", lambda c, k: c.post("/v1/detect", content=noise[k % 20], headers={"Content-Type": "image/jpeg"}),
         415),
        ("truncated", lambda c, k: c.post("/v1/detect", files={"image": ("cut.jpg", truncated)}),
         200 if "cut.jpg" in want else 415),
        ("bomb", lambda c, k: c.post("/v1/detect", content=png_declaring(30000, 30000),
                                     headers={"Content-Type": "image/png"}), 413),
        ("wrong type", lambda c, k: c.post("/v1/detect", content=good["g0.png"], headers={"Content-Type": "text/csv"}),
         415),
        ("oversized", lambda c, k: c.post("/v1/detect", content=big, headers={"Content-Type": "image/png"}), 413),
        ("chunked", lambda c, k: c.post("/v1/detect", content=chunked(), headers={"Content-Type": "image/png"}), 413),
        ("hang up", lambda c, k: raw_post(tiny_server.port, "/v1/detect", "image/png", good["g0.png"][:500],
                                          declared=len(good["g0.png"]), close_after=True), None),
    ]
    plan = [kinds[0]] * 100 + [kinds[1 + k % (len(kinds) - 1)] for k in range(100)]
    np.random.default_rng(1).shuffle(plan)

    def one(c, k):
        what, send, status = plan[k]
        r = send(c, k)
        if status is None:
            return what, None, None
        return what, r.status_code, r.json()

    started = time.monotonic()
    with httpx.Client(base_url=tiny_server.url, timeout=120, limits=httpx.Limits(max_connections=16)) as c, \
            cf.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda k: one(c, k), range(len(plan)), timeout=300))
        assert c.get("/readyz").status_code == 200
    assert time.monotonic() - started < 300
    for (what, code, body), (_, _, status) in zip(answers, plan):
        if status is None:
            continue
        assert code == status, (what, code, body)
        if code != 200:
            assert list(body) == ["error"] and "\n" not in body["error"], body
        else:
            same_record(body, want[body["file"]])
    assert tiny_server.proc.poll() is None
    assert list(tiny_server.tmp.glob("vggdet-serve-*/*")) == []  # no upload left behind


def test_video_stream_lines_equal_the_predictor_on_keyframes(tiny_server, tiny_ckpt, tmp_path):
    path = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (128, 96))
    for k in range(12):
        writer.write(photo(96, 128, 100 + k)[:, :, ::-1].copy())
    writer.release()
    cap, frames = cv2.VideoCapture(path), []
    while (ok := cap.read())[0]:
        frames.append(np.ascontiguousarray(ok[1][:, :, ::-1]))
    cap.release()
    predictor = load_predictor(str(tiny_ckpt), device="cpu")
    data = Path(path).read_bytes()
    with httpx.Client(base_url=tiny_server.url, timeout=120) as c:
        with c.stream("POST", "/v1/detect/video", params={"every": 3, "start_frame": 2, "max_frames": 8},
                      content=data, headers={"Content-Type": "video/mp4"}) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert [x["frame"] for x in lines] == list(range(2, 10))
        assert lines[1]["time_s"] == 0.3
        for x in lines:
            key = 2 + (x["frame"] - 2) // 3 * 3  # frames between keyframes repeat the last keyframe's boxes
            want = detection_record("", 128, 96, predictor.predict(frames[key]))
            same_record({"file": "", "width": 128, "height": 96, "detections": x["detections"]}, want)
        form = c.post("/v1/detect/video", params={"max_frames": 2}, files={"video": ("clip.mp4", data)})
        assert [json.loads(x)["frame"] for x in form.text.splitlines()] == [0, 1]
        bad = c.post("/v1/detect/video", content=b"\x00" * 5000, headers={"Content-Type": "video/mp4"})
        assert bad.status_code == 415 and "video" in bad.json()["error"]
        late = c.post("/v1/detect/video", params={"start_frame": 50}, content=data, headers={"Content-Type": "video/mp4"})
        assert late.status_code == 400 and "start_frame" in late.json()["error"]
    assert list(tiny_server.tmp.glob("vggdet-serve-*/*")) == []  # every temp video deleted


def test_sigterm_finishes_requests_in_flight_answers_503_meanwhile_and_exits_0(tiny_ckpt, tmp_path):
    server = Server(tiny_ckpt, tmp=tmp_path)
    try:
        body = png_bytes(photo(96, 128, 3))
        s = raw_post(server.port, "/v1/detect", "image/png", body[:200], declared=len(body))
        with httpx.Client(base_url=server.url, timeout=30) as c:
            until(lambda: c.get("/healthz").json()["in_flight"] == 1)  # the server is reading that body
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while (r := c.post("/v1/detect", content=body, headers={"Content-Type": "image/png"})).status_code != 503:
                assert time.monotonic() < deadline, r.text
                time.sleep(0.1)
            assert "Retry-After" in r.headers and "shutting down" in r.json()["error"]
            assert c.get("/readyz").status_code == 503 and c.get("/healthz").status_code == 200
        s.sendall(body[200:])
        status, answer = read_response(s)
        assert status == 200 and answer["width"] == 128
        assert server.proc.wait(60) == 0
        assert "finishing 1 request(s) in flight" in server.output() and "stopped" in server.output()
    finally:
        server.stop()
    assert not list(server.tmp.glob("vggdet-serve-*"))  # the service's temp folder went with it


def test_bad_command_lines_are_one_line_and_exit_2(tmp_path, capsys):
    from vggdet.cli.serve import main

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        cases = [([str(LEGACY), "--port", str(busy.getsockname()[1])], "cannot listen there"),
                 ([str(tmp_path / "nope.pth"), "--port", "0"], "nope.pth"),
                 ([str(LEGACY), "--max-batch", "0"], "--max-batch")]
        for args, words in cases:
            assert main(args) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("error: ") and words in err and "\n" not in err, err
    finally:
        busy.close()


# ---------------------------------------------------------------------------------- in-process servers
class GatedPredictor(Predictor):
    """A stand-in model that waits at `gate` in every forward and detects one box per image."""

    backend, precision, device, min_score = "fake", "fp32", "cpu", 0.05

    def __init__(self):
        from vggdet.config import load_config

        self.classes, self.config, self.gate, self.calls = ["thing"], load_config(None, []), threading.Event(), []

    def _prepare(self, image):
        return np.asarray(image).transpose(2, 0, 1)

    def _forward(self, inputs, proposals=None):
        self.calls.append(len(inputs))
        assert self.gate.wait(60)
        return [{"boxes": np.array([[1, 1, 5, 5]], np.float32), "labels": np.array([1]), "scores": np.array([0.9],
                                                                                                            np.float32)}
                for _ in inputs]


class ThreadServer:
    """uvicorn in a thread around `app` on 127.0.0.1:<free port>; stop() sets its exit flag and joins."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive()
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


def gated_service(**settings) -> tuple:
    predictor = GatedPredictor()
    predictor.gate.set()
    service = DetectionService(predictor, ServeSettings(**settings))
    service.warm_up()
    return predictor, service


def until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_full_queue_answers_503_with_retry_after():
    predictor, service = gated_service(queue=2, max_batch=1)
    predictor.gate.clear()
    server = ThreadServer(create_app(service))
    image = png_bytes(photo(64, 64, 1))

    def post():
        with httpx.Client(timeout=60) as c:
            return c.post(server.url + "/v1/detect", content=image, headers={"Content-Type": "image/png"})

    pool = cf.ThreadPoolExecutor(3)
    try:
        first = pool.submit(post)
        until(lambda: len(predictor.calls) == 3)  # two warm-up calls, then the first request in the model
        queued = [pool.submit(post) for _ in range(2)]
        until(lambda: service.batcher.pending == 2)
        with httpx.Client(timeout=30) as c:
            full = c.post(server.url + "/v1/detect", content=image, headers={"Content-Type": "image/png"})
            video = c.post(server.url + "/v1/detect/video", content=b"x" * 100, headers={"Content-Type": "video/mp4"})
        assert full.status_code == 503 and full.headers["Retry-After"] == "1" and "queue is full" in full.json()["error"]
        assert video.status_code == 503
        predictor.gate.set()
        answers = [f.result(60) for f in [first, *queued]]
        assert [a.status_code for a in answers] == [200] * 3
        assert answers[0].json()["detections"] == [{"box": [1.0, 1.0, 5.0, 5.0], "label": "thing", "score": 0.9}]
    finally:
        predictor.gate.set()
        pool.shutdown()
        server.stop()


def test_api_key_is_required_on_the_api_only():
    _, service = gated_service(api_key="s3cret")
    server = ThreadServer(create_app(service))
    image = png_bytes(photo(64, 64, 1))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
                r = c.post("/v1/detect", content=image, headers={"Content-Type": "image/png", **headers})
                assert r.status_code == 401 and "API key" in r.json()["error"], r.text
                assert r.headers["WWW-Authenticate"] == "Bearer"
            assert c.get("/v1/model").status_code == 401
            ok = {"Authorization": "Bearer s3cret"}
            assert c.post("/v1/detect", content=image, headers={"Content-Type": "image/png", **ok}).status_code == 200
            assert c.get("/v1/model", headers=ok).json()["limits"]["auth"] == "bearer"
            assert "s3cret" not in c.get("/v1/model", headers=ok).text
            assert [c.get(p).status_code for p in ("/", "/healthz", "/readyz", "/static/app.js")] == [200] * 4
    finally:
        server.stop()


def test_an_onnx_export_serves_like_its_predictor():
    from vggdet.serve import build_service

    model = str(FIXTURES / "legacy_v1.onnx")
    server = ThreadServer(create_app(build_service(model, ServeSettings())))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.get("/v1/model").json()["backend"] == "onnxruntime"
            got = c.post("/v1/detect", params={"score_thr": 0.12}, files={"image": ("a.png", LEGACY_IMAGE.read_bytes())})
        predictor = load_predictor(model)
        want = detection_record("a.png", 128, 128, predictor.predict(str(LEGACY_IMAGE), score_thresh=0.12))
        assert {k: v for k, v in got.json().items() if k != "time_ms"} == want and want["detections"]
    finally:
        server.stop()


def test_factory_app_answers_healthz_while_the_model_loads():
    release = threading.Event()

    def factory():
        assert release.wait(60)
        return gated_service()[1]

    server = ThreadServer(create_app(factory, ServeSettings()))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.get("/healthz").status_code == 200
            r = c.get("/readyz")
            assert r.status_code == 503 and "loading" in r.json()["error"]
            assert c.post("/v1/detect", content=b"x", headers={"Content-Type": "image/png"}).status_code == 503
            release.set()
            until(lambda: c.get("/readyz").status_code == 200)
    finally:
        release.set()
        server.stop()


# ----------------------------------------------------------------------------------------------- batcher
def test_batcher_gathers_waits_only_for_company_and_isolates_failures():
    gate, calls = threading.Event(), []

    def run(items):
        calls.append(list(items))
        assert gate.wait(30)
        if "bad" in items:
            raise ValueError("bad item")
        return [x * 10 for x in items]

    b = Batcher(run, max_batch=3, max_wait_s=0.5, capacity=6)
    try:
        gate.set()
        t = time.perf_counter()
        (result, timing), = [f.result(10) for f in b.submit([1])]
        assert result == 10 and timing.batch == 1 and time.perf_counter() - t < 0.4  # alone: no wait for company
        gate.clear()
        first = b.submit([1])
        until(lambda: len(calls) == 2)  # in the model; the next ones queue meanwhile
        rest = b.submit([2, 3, 4, "bad"])
        with pytest.raises(QueueFull):
            b.reserve(3)  # 4 queued + 3 > 6
        slots = b.reserve(2)
        gate.set()
        assert [f.result(10)[0] for f in rest[:3]] == [20, 30, 40]
        with pytest.raises(ValueError, match="bad item"):
            rest[3].result(10)
        assert calls[2] == [2, 3, 4] and calls[3] == ["bad"]  # up to max_batch at once, the failure alone
        t = time.perf_counter()
        late = b.submit([5], slots)  # while 1 place is still reserved, the worker waits for it (<= 0.5 s)
        slots.release()  # ... and stops waiting as soon as that request gives up
        assert late[0].result(10)[0] == 50 and time.perf_counter() - t < 0.4
        assert first[0].result(10)[0] == 10 and b.pending == 0
    finally:
        gate.set()
        b.close()


# --------------------------------------------------------------------------------------- the page, in Chromium
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return ""


def test_page_in_headless_chromium(legacy_server, tmp_path):
    """Upload the legacy image, wait for the drawing, boxes drawn == the API's count at the slider's threshold;
    a higher threshold draws fewer; a class unticked draws only the others; a text file shows an error in
    plain words. Keeps page.png in the test's temp folder."""
    if not _chromium():
        pytest.skip("no Chromium installed (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the page test needs playwright (test extra)")
    data = LEGACY_IMAGE.read_bytes()
    with httpx.Client(base_url=legacy_server.url, timeout=60) as c:
        scores = [d["score"] for d in c.post("/v1/detect", files={"image": ("a.png", data)}).json()["detections"]]
        # slider positions (steps of 0.01) with no score within a rounding step, so the page's comparison of
        # rounded scores and the server's of exact ones agree
        clear = [t for t in np.round(np.arange(0.10, 0.30, 0.01), 2) if min(abs(np.array(scores) - t)) > 2e-4]
        counts = {t: sum(s >= t for s in scores) for t in clear}
        low = next(t for t in clear if counts[t] >= 5)
        high = next(t for t in reversed(clear) if 0 < counts[t] < counts[low])
        count = {t: len(c.post("/v1/detect", params={"score_thr": t}, files={"image": ("a.png", data)}).json()
                        ["detections"]) for t in (low, high)}
        circles = len(c.post("/v1/detect", params={"score_thr": low, "classes": "square,triangle"},
                             files={"image": ("a.png", data)}).json()["detections"])
    assert count[low] > count[high] > 0
    (tmp_path / "notes.txt").write_text("not an image")
    outside = []
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=flags)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(60_000)
            page.on("request", lambda r: r.url.startswith((legacy_server.url, "blob:", "data:")) or outside.append(r.url))
            page.goto(legacy_server.url + "/")
            page.wait_for_selector("#classes input")  # the model's classes arrived
            set_slider = "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }"
            page.eval_on_selector("#score", set_slider, str(low))
            page.set_input_files("#files", str(LEGACY_IMAGE))
            page.wait_for_selector(".card[data-state=done] canvas")
            drawn = lambda: int(page.get_attribute(".card canvas", "data-boxes"))  # noqa: E731
            assert drawn() == count[low]
            assert page.locator(".card tbody tr").count() == count[low]
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            page.eval_on_selector("#score", set_slider, str(high))
            assert drawn() == count[high] < count[low]
            page.eval_on_selector("#score", set_slider, str(low))
            page.uncheck("#classes input[value=circle]")
            assert drawn() == circles
            page.set_input_files("#files", str(tmp_path / "notes.txt"))
            error = page.wait_for_selector("#errors .error")
            assert "notes.txt is not an image or video the server can read" in error.inner_text()
            page.screenshot(path=str(tmp_path / "page_error.png"), full_page=True)
        finally:
            browser.close()
    assert outside == []  # nothing loaded from anywhere but the server
    assert (tmp_path / "page.png").stat().st_size > 10_000
