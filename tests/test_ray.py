"""Inference on Ray Data (vggdet/inference/ray_data.py) on a small local Ray instance: the same outputs as one
process, test_det's mAP, a killed actor, an address where no cluster listens, input order."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import LEGACY, LEGACY_EXPECTED, ROOT, free_port, one_line, run_tool

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

from vggdet.inference.ray_data import InOrder, PredictorFactory, Workers, run_images_on_ray  # noqa: E402

LOW = ["--score-thr", "0"]  # the random tiny model scores ~1/3: keep everything
# The actors run 1 thread each (--worker-cpus 1): so does the one-process run they are compared with, and the
# Winograd choice is the fixed rule (not a timing per process), so both run the same arithmetic.
SAME = ["runtime.threads=1", "runtime.winograd_tune=false"]


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    """One small Ray instance for the module (2 CPUs, 150 MB object store, no dashboard), started in this
    process; the tools join it by its address. Its workers inherit this process's environment."""
    ctx = ray.init(num_cpus=2, object_store_memory=150 << 20, include_dashboard=False, log_to_driver=False,
                   logging_level="warning", _temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, small_shapes, bccd_root) -> Path:
    """imgs/: shapes (128 px), a gray PNG, a corrupt JPEG; list.txt: BCCD images (640x480, absolute paths)
    and a relative path."""
    d = tmp_path_factory.mktemp("ray_inputs")
    shutil.copytree(Path(small_shapes) / "JPEGImages", d / "imgs")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(d / "imgs" / "gray.png"), rng.integers(0, 255, (100, 140), dtype=np.uint8))
    (d / "imgs" / "bad.jpg").write_bytes(b"not a jpeg at all" * 20)
    (d / "more").mkdir()
    cv2.imwrite(str(d / "more" / "wide.png"), rng.integers(0, 255, (90, 200, 3), dtype=np.uint8))
    bccd = sorted((bccd_root / "JPEGImages").glob("*.jpg"))[:5]
    (d / "list.txt").write_text("# BCCD images and one relative path\n" + "".join(f"{p}\n" for p in bccd)
                                + "\nmore/wide.png\n")
    return d


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_ray_writes_what_one_process_writes(ray_address, inputs, tiny_ckpt, tmp_path, capsys):
    """The one-process run in this process, the Ray run as a tool joining the instance by its address."""
    import torch

    from vggdet.cli.infer import main

    args = [str(tiny_ckpt), str(inputs / "imgs"), str(inputs / "list.txt"), *LOW, "--batch", "2", "--format", "coco",
            "--set", *SAME]
    threads = torch.get_num_threads()
    try:
        code = main([*args, "--out", str(tmp_path / "one")])
    finally:
        torch.set_num_threads(threads)  # runtime.threads=1 is process-wide
    one = capsys.readouterr()
    two = run_tool(["tools/infer.py", *args, "--out", str(tmp_path / "ray"), "--ray", ray_address, "--workers", "2"])
    assert code == two.returncode == 1, two.stderr[-3000:]  # bad.jpg fails in both, the rest run
    errors = [line for line in two.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in one.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.jpg: cannot decode image" in errors[0]
    a, b = _files(tmp_path / "one"), _files(tmp_path / "ray")
    assert sorted(a) == sorted(b) and len(a) == 12 + 1 + 6 + 2  # annotated copies + the two result files
    for name in a:
        assert a[name] == b[name], name  # detections.jsonl in input order, the COCO file, every image's bytes
    rows = [json.loads(line) for line in a["detections.jsonl"].decode().splitlines()]
    assert len({(r["width"], r["height"]) for r in rows}) == 4 and all(r["detections"] for r in rows)
    summary = [line for line in two.stdout.replace("/ray", "/one").splitlines() if not line.startswith("model time")]
    assert summary == [line for line in one.out.splitlines() if not line.startswith("model time")]


def test_test_det_on_ray_gives_the_same_map(ray_address, legacy_shapes, tmp_path, capsys):
    """tools/test_det.py --ray (in this process: it uses the module's Ray instance) against evaluate_file."""
    from vggdet.cli.test import main
    from vggdet.inference.dataset import evaluate_file

    overrides = [f"data.root={legacy_shapes}"]
    assert main([str(LEGACY), "--out", str(tmp_path), "--ray", ray_address, "--workers", "2", "--set", *overrides]) == 0
    assert "mAP" in capsys.readouterr().out
    on_ray = json.loads((tmp_path / "metrics.json").read_text())
    here = evaluate_file(str(LEGACY), overrides=overrides).metrics
    assert on_ray == {**json.loads(json.dumps(here)), "checkpoint": str(LEGACY)}
    assert on_ray["mAP"] == pytest.approx(LEGACY_EXPECTED["test_mAP"], abs=1e-9)
    assert len(list(tmp_path.glob("comp4_det_test_*.txt"))) == 3


def _actor_pids() -> list:
    """Our Ray instance's pool actors: processes below this one (raylet -> workers) named after DetectImages."""
    children: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
            except OSError:
                continue
            children.setdefault(ppid, []).append((int(entry), cmd))
    found, todo = [], [os.getpid()]
    while todo:
        for pid, cmd in children.get(todo.pop(), []):
            todo.append(pid)
            if cmd.startswith("ray::") and "DetectImages" in cmd:
                found.append(pid)
    return found


def test_a_killed_actor_is_replaced_and_every_image_is_written_once(ray_address, inputs, tiny_ckpt, tmp_path):
    shapes = sorted(p for p in (inputs / "imgs").glob("*.jpg") if p.name != "bad.jpg")
    paths = []
    for k, p in enumerate(shapes * 4):  # 48 distinct files: each has its own record and annotated copy
        paths.append(str(tmp_path / f"{k:02d}_{p.name}"))
        shutil.copy(p, paths[-1])
    slow = ("runtime.score_thresh=0.0", "model.input.min_size=600", "model.input.max_size=1000", *SAME)  # 0.1 s an image
    factory = PredictorFactory(str(tiny_ckpt), overrides=slow)
    out, killed, done = tmp_path / "out", [], threading.Event()

    def kill_one_actor_mid_run():
        deadline = time.time() + 120
        while time.time() < deadline and not done.is_set():
            written = len(list(out.glob("*.jpg"))) if out.is_dir() else 0
            pids = _actor_pids()
            if written >= 2 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(written)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor_mid_run, daemon=True)
    killer.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            stats = run_images_on_ray(factory, paths, str(out), Workers(2, 1, 0), score_thr=0.0, batch=2,
                                      yolo=True, classes=["circle", "square"])
        finally:
            done.set()
            killer.join(10)
    assert killed and killed[0] < len(paths), "the actor was not killed mid-run"
    assert not [w for w in caught if "twice" in str(w.message)]
    rows = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == paths and stats.images == len(paths) and not stats.failed
    assert len(list(out.glob("*.jpg"))) == len(paths)
    # the same detections as one process gives
    import torch

    from vggdet.inference.images import run_images

    threads = torch.get_num_threads()
    with factory() as predictor:
        run_images(predictor, paths[:6], str(tmp_path / "one"), score_thr=0.0, draw=False, yolo=True,
                   names={p: os.path.basename(p) for p in paths[:6]}, progress=False)
    torch.set_num_threads(threads)
    assert (tmp_path / "one" / "detections.jsonl").read_text().splitlines() == \
        (out / "detections.jsonl").read_text().splitlines()[:6]
    for p in ["classes.txt"] + [f"labels/{os.path.basename(p)[:-4]}.txt" for p in paths[:6]]:  # --format yolo
        assert (tmp_path / "one" / p).read_text() == (out / p).read_text(), p


def test_no_cluster_at_the_address_is_one_line_and_writes_nothing(inputs, tiny_ckpt, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    r = run_tool(["tools/infer.py", str(tiny_ckpt), str(inputs / "imgs"), "--out", str(tmp_path / "out"),
                  "--ray", address])
    assert r.returncode == 2 and f"--ray {address}: no Ray cluster answers there" in one_line(r)
    assert os.listdir(tmp_path) == []


def test_in_order_hands_on_each_item_once_in_input_order():
    got = []
    order = InOrder(got.append)
    for index in (2, 0, 3, 1, 1, 5):
        order.put(index, f"r{index}")
    assert got == ["r0", "r1", "r2", "r3"] and order.duplicates == 1 and list(order.waiting) == [5]
    order.flush()
    assert got[-1] == "r5" and not order.waiting


def test_a_worker_failure_is_one_line():
    from vggdet.inference.ray_data import _worker_error

    text = ("The actor died because of an error raised in its creation task, ray::MapWorker(...).__init__() (pid=1)\n"
            "  File \"x.py\", line 79, in load_checkpoint\n    raise CheckpointError(...)\n"
            "vggdet.training.checkpoint.CheckpointError: checkpoint not found: /m.pth\n")
    assert _worker_error(RuntimeError(text)) == ("a Ray worker failed: vggdet.training.checkpoint.CheckpointError: "
                                                 "checkpoint not found: /m.pth")
    assert "installed on every node" in _worker_error(RuntimeError("ModuleNotFoundError: No module named 'vggdet'"))


def test_ray_flags_need_ray_and_fit_the_device(capsys):
    from vggdet.cli.infer import parse_args

    for argv, message in ((["m.pth", "a.jpg", "--workers", "2"], "--workers needs --ray"),
                          (["m.pth", "a.jpg", "--ray", "--worker-cpus", "0"], "--worker-cpus must be > 0"),
                          (["m.pth", "a.jpg", "--ray", "--device", "cuda"], "the workers' device follows"),
                          (["m.pth", "--camera", "0", "--ray"], "--camera runs in one process"),
                          (["m.pth", "a.jpg", "--ray", "photos/"], "--ray photos/: not local, auto, HOST:PORT")):
        with pytest.raises(SystemExit) as e:
            parse_args(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err, argv
    assert parse_args(["m.pth", "a.jpg", "--ray"]).ray == "local"
    assert parse_args(["m.pth", "a.jpg", "--ray", "10.0.0.1:6379", "--workers", "3"]).workers == 3


# ---------------------------------------------------------------------------------- Ray Serve replicas
def _replica_pid(name: str) -> int:
    """The pid of the Serve replica whose id is `name` (the end of its actor's name)."""
    actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith("#" + name)]
    assert len(actors) == 1, actors
    actor = ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"])
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)


def test_serve_replicas_on_ray_answer_like_one_process_and_a_killed_one_is_replaced(ray_address, tiny_ckpt, tmp_path):
    """tools/serve.py --ray ADDRESS --replicas 2 joins the module's Ray instance: both replicas answer (named by
    X-Vggdet-Replica), every answer equals the one-process app's, a replica killed by pid is replaced while
    requests keep succeeding, and SIGTERM deletes the app and exits 0."""
    httpx = pytest.importorskip("httpx", reason="the server tests need httpx (test extra)")
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install -e '.[ray]')")
    import asyncio

    from vggdet.serve import ServeSettings, build_service, create_app

    overrides = ["runtime.score_thresh=0.0", *SAME]
    rng = np.random.default_rng(1)
    images = [cv2.imencode(".png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))[1].tobytes()
              for h, w in ((128, 128), (96, 160), (200, 120))]

    async def one_process(app) -> list:  # the one-process server's app, called in this process
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://one") as client:
            return [(await client.post("/v1/detect", content=b, headers={"content-type": "image/png"})).json()
                    for b in images]

    service = build_service(str(tiny_ckpt), ServeSettings(), overrides=overrides)
    try:
        want = asyncio.run(one_process(create_app(service)))
    finally:
        service.close()
    for w in want:
        del w["time_ms"]
    assert sum(len(w["detections"]) for w in want) > 0

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "tools/serve.py", str(tiny_ckpt), "--ray", ray_address,
                                 "--replicas", "2", "--port", str(port), "--set", *overrides],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    answers, names = [], []

    def ask(client, k: int) -> None:
        r = client.post(url + "/v1/detect", content=images[k % 3], headers={"content-type": "image/png"})
        answers.append((r.status_code, k % 3, r.json() if r.status_code == 200 else r.text))
        names.append(r.headers.get("x-vggdet-replica"))

    try:
        deadline = time.monotonic() + 240
        while "serving " not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        with httpx.Client(timeout=60) as client:
            for k in range(60):  # both replicas answer (the proxy spreads requests over them)
                ask(client, k)
                if len(set(names)) == 2:
                    break
            first = set(names)
            assert len(first) == 2 and None not in first, names
            victim = names[-1]
            os.kill(_replica_pid(victim), signal.SIGKILL)
            deadline, k = time.monotonic() + 120, 0
            while not set(names) - first and time.monotonic() < deadline and k < 2000:
                ask(client, k)
                k += 1
            assert set(names) - first, "no new replica answered within 120 s"
            assert client.get(url + "/").status_code == 200  # the page too
        for status, i, got in answers:
            assert status == 200, got
            del got["time_ms"]
            assert got == want[i]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert "stopped" in log.read_text()
    deadline = time.monotonic() + 60  # the app is deleted: no replica is left on the cluster
    while [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]:
        assert time.monotonic() < deadline, "replicas left on the cluster"
        time.sleep(0.5)


def test_replica_flags_need_ray_and_a_bad_model_fails_before_ray(tiny_ckpt, tmp_path):
    r = run_tool(["tools/serve.py", str(tiny_ckpt), "--replicas", "2"])
    assert r.returncode == 2 and "--replicas needs --ray" in r.stderr
    missing = tmp_path / "nope.pt"  # checked before joining: the address (where nothing listens) is not reached
    r = run_tool(["tools/serve.py", str(missing), "--ray", f"127.0.0.1:{free_port()}", "--replicas", "2"])
    assert r.returncode == 2 and one_line(r) == f"error: checkpoint not found: {missing}", r.stderr
