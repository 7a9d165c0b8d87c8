"""The HTTP server under load: throughput, latency and errors at several concurrencies, against the
predictor's own batch-1 speed measured in the same run, and RSS over a soak.

    python benchmarks/bench_serve.py MODEL [--concurrency 1,4,16] [--seconds 20] [--soak 120 --soak-concurrency 8]
                                     [--image PATH] [--server-args "--max-batch 8 --max-wait-ms 5"] [--json out.json]

Needs aiohttp (pip install aiohttp). MODEL: what tools/serve.py loads (.pth, .onnx, int8 .onnx), or
`vgg16-random` for the full VGG16 with random weights and 21 classes (written to a temp checkpoint). One
process runs the clients (asyncio, aiohttp: a third of httpx's client time per request, so the client's
share of the latency stays small), the server is `tools/serve.py` in a subprocess on 127.0.0.1, so the two share this machine's cores as a
server and a local client would. Per concurrency level: each client posts the image (raw body) again and
again, for --seconds or --max-requests in all, after one warm-up request each; reported: images/s,
p50 / p95 / p99 latency, errors (any status but 200, or a failed request), the mean batch the server ran
(from GET /v1/model). First, in the same run, the predictor alone: `predict` on the decoded image, batch 1,
in this process, before the server starts. "added" = mean latency at concurrency 1 minus the predictor's
mean time per image, over the latter; the predictor is timed before the server starts and again after it
stops, and the faster run is the baseline. The soak samples the server's RSS (/proc/PID/status) each second;
growth is from the end of the first fifth (warm-up) to the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import aiohttp  # noqa: E402
from common import machine, random_checkpoint  # noqa: E402

from vggdet.data.image_io import decode_image  # noqa: E402


def photo_jpeg(h: int = 375, w: int = 500, seed: int = 0) -> bytes:
    """A VOC-sized photo-like JPEG: smooth colour blobs plus a little noise."""
    import cv2

    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (h // 25 + 2, w // 25 + 2, 3), dtype=np.uint8)
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return buf.tobytes()


def predictor_speed(model: str, data: bytes, seconds: float) -> dict:
    """The predictor alone, batch 1, on the decoded image: ms per image and images/s (after 3 warm-ups)."""
    from vggdet.inference import load_predictor

    t = time.perf_counter()
    image = decode_image(data, "image")
    decode_ms = 1000 * (time.perf_counter() - t)
    predictor = load_predictor(model)
    for _ in range(3):
        predictor.predict(image)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t = time.perf_counter()
        predictor.predict(image)
        times.append(time.perf_counter() - t)
    predictor.close()
    mean = statistics.mean(times)
    return {"ms": 1000 * mean, "median_ms": 1000 * statistics.median(times), "images_s": 1 / mean, "n": len(times),
            "decode_ms": decode_ms, "backend": predictor.backend, "precision": predictor.precision}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, extra: list, log_path: str) -> tuple:
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "serve.py"), model, "--port", str(port),
                             *extra], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while "serving " not in open(log_path).read():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the server did not start:\n{open(log_path).read()}")
        time.sleep(0.5)
    return proc, f"http://127.0.0.1:{port}"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def load(url: str, data: bytes, ctype: str, concurrency: int, seconds: float, max_requests: int,
               path: str = "/v1/detect", on_tick=None) -> dict:
    """`concurrency` clients posting `data` until `seconds` pass or `max_requests` are sent."""
    latencies, errors, sent, inside = [], 0, 0, []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as client:
        async def post():
            if path == "/healthz":
                async with client.get(path) as r:
                    return r.status, await r.json()
            async with client.post(path, data=data, headers={"Content-Type": ctype}) as r:
                return r.status, await r.json()

        await asyncio.gather(*(post() for _ in range(concurrency)))  # warm-up: one each, open the connections
        end = time.perf_counter() + seconds

        async def worker():
            nonlocal errors, sent
            while time.perf_counter() < end and sent < max_requests:
                sent += 1
                t = time.perf_counter()
                try:
                    status, answer = await post()
                    ok = status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    ok = False
                latencies.append(time.perf_counter() - t)
                errors += not ok
                if ok and path == "/v1/detect":
                    inside.append(answer["time_ms"])  # the server's own account: queue, model, total

        async def ticker():
            while time.perf_counter() < end and sent < max_requests:
                on_tick()
                await asyncio.sleep(1.0)

        start = time.perf_counter()
        tasks = [worker() for _ in range(concurrency)] + ([ticker()] if on_tick else [])
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors, "seconds": wall,
            "images_s": len(latencies) / wall, "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            **{f"server_{k}_ms": float(np.mean([t[k] for t in inside])) if inside else float("nan")
               for k in ("queue", "model", "total")}}


def batches(url: str) -> dict:
    with urllib.request.urlopen(url + "/v1/model", timeout=30) as r:
        return {int(k): v for k, v in json.load(r)["batches"].items()}


def mean_batch(before: dict, after: dict) -> float:
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    calls = sum(diff.values())
    return sum(k * v for k, v in diff.items()) / calls if calls else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--seconds", type=float, default=20.0, help="per concurrency level")
    p.add_argument("--max-requests", type=int, default=20000, help="per level, a bound besides the time")
    p.add_argument("--predictor-seconds", type=float, default=10.0)
    p.add_argument("--soak", type=float, default=0.0, help="seconds of soak (0: none)")
    p.add_argument("--soak-concurrency", type=int, default=8)
    p.add_argument("--image", default=None, help="the image to post (default: a 500x375 photo-like JPEG)")
    p.add_argument("--server-args", default="", help="extra tools/serve.py flags, one string")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]
    tmp = tempfile.mkdtemp(prefix="bench_serve_")
    # the full VGG16 Faster R-CNN, random weights, 20 + background classes
    model = random_checkpoint(os.path.join(tmp, "vgg16_random.pth"), None, ("model.num_classes=20",)) \
        if a.model == "vgg16-random" else a.model
    data = open(a.image, "rb").read() if a.image else photo_jpeg()
    ctype = "image/png" if data[:4] == b"\x89PNG" else "image/jpeg"
    h, w = decode_image(data, "image").shape[:2]
    info = {"machine": machine(), "model": a.model, "image": f"{a.image or 'photo-like JPEG'} {w}x{h}",
            "load_before": os.getloadavg(), "server_args": a.server_args}
    print(info["machine"])
    print(f"model {a.model}, image {info['image']}, server args: {a.server_args or '(defaults)'}")
    before = predictor_speed(model, data, a.predictor_seconds)
    print(f"predictor alone ({before['backend']} {before['precision']}), batch 1, before the server: "
          f"{before['ms']:.1f} ms/image (median {before['median_ms']:.1f}) over {before['n']} runs; "
          f"decoding the image: {before['decode_ms']:.2f} ms")
    proc, url = start_server(model, shlex.split(a.server_args), os.path.join(tmp, "server.log"))
    rows = []
    try:
        health = asyncio.run(load(url, b"", "", 1, 3.0, 2000, path="/healthz"))
        info["healthz_p50_ms"] = health["p50_ms"]
        print(f"GET /healthz round trip (client + server, no work): p50 {health['p50_ms']:.2f} ms")
        print(f"{'conc':>4} {'requests':>8} {'images/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6} "
              f"{'batch':>5}   server's own mean ms: queue / model call / total")
        for c in levels:
            seen = batches(url)
            r = asyncio.run(load(url, data, ctype, c, a.seconds, a.max_requests))
            r["mean_batch"] = mean_batch(seen, batches(url))
            rows.append(r)
            print(f"{c:>4} {r['requests']:>8} {r['images_s']:>9.2f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
                  f"{r['p99_ms']:>8.1f} {r['errors']:>6} {r['mean_batch']:>5.2f}   {r['server_queue_ms']:.1f} / "
                  f"{r['server_model_ms']:.1f} / {r['server_total_ms']:.1f}")
        info["levels"] = rows
        if a.soak:
            samples = []
            r = asyncio.run(load(url, data, ctype, a.soak_concurrency, a.soak, 10 ** 9,
                                 on_tick=lambda: samples.append((time.perf_counter(), rss_mib(proc.pid)))))
            samples.append((time.perf_counter(), rss_mib(proc.pid)))
            warm = samples[max(0, len(samples) // 5 - 1)][1]
            final, peak = samples[-1][1], max(s[1] for s in samples)
            info["soak"] = {**r, "rss_start_mib": samples[0][1], "rss_warm_mib": warm, "rss_end_mib": final,
                            "rss_peak_mib": peak, "growth": (final - warm) / warm}
            print(f"soak {a.soak:.0f} s at concurrency {a.soak_concurrency}: {r['requests']} requests, "
                  f"{r['images_s']:.2f} images/s, {r['errors']} errors; server RSS {samples[0][1]:.0f} MiB at the "
                  f"start, {warm:.0f} after warm-up, {final:.0f} at the end (peak {peak:.0f}): "
                  f"{100 * (final - warm) / warm:+.2f} %")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
        info["server_exit"] = code
        info["load_after"] = os.getloadavg()
        print(f"server exit status {code}; load average before {info['load_before'][0]:.2f}, after "
              f"{info['load_after'][0]:.2f}")
    # the predictor again, the server gone: the faster of the two runs is the baseline (a busy machine only
    # ever slows a run down)
    after = predictor_speed(model, data, a.predictor_seconds)
    base = min(before, after, key=lambda b: b["ms"])
    info["predictor"] = {"before": before, "after": after, "baseline": base}
    print(f"predictor alone again, after the server: {after['ms']:.1f} ms/image (median {after['median_ms']:.1f}); "
          f"baseline {base['ms']:.1f} ms = {base['images_s']:.2f} images/s")
    if rows and rows[0]["concurrency"] == 1:
        r = rows[0]
        info["added_at_1"] = {"mean": (r["mean_ms"] - base["ms"]) / base["ms"],
                              "median": (r["p50_ms"] - base["median_ms"]) / base["median_ms"]}
        print(f"concurrency 1: latency mean {r['mean_ms']:.1f} / median {r['p50_ms']:.1f} ms vs the predictor's "
              f"{base['ms']:.1f} / {base['median_ms']:.1f} ms: the server adds {100 * info['added_at_1']['mean']:+.1f} "
              f"% / {100 * info['added_at_1']['median']:+.1f} %")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
