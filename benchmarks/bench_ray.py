"""Images/s on Ray Data (1 and 2 actors) against the one-process run: the same images, the same model, one run.

    python benchmarks/bench_ray.py [--config configs/bccd_tiny.py] [--images 256] [--repeat 2] [--root DIR]

The model is the config's network with seeded random weights (speed does not depend on training), saved as
a checkpoint that every variant loads; the images are the first --images BCCD JPEGs (640x480), batch 1,
score threshold 0.5, annotated copies drawn (the default of tools/infer.py), the CPU kernels by the fixed
rule (runtime.winograd_tune=false: no per-process timing inside the measurement). Variants:
  one process     run_images (what tools/infer.py runs), torch threads = all cores
  ray 1 x C       run_images_on_ray with 1 actor of C = all cores (its model's threads)
  ray N x 1       N actors of 1 CPU each (N = the cores)
on one local Ray instance (all cores, no dashboard), started once. "End to end" is images / the whole call
(model loading and, on Ray, the actor pool's start included); "steady" is the rate at which annotated copies
appear in the output folder between 10 % and 90 % of the images (a thread counts them every 20 ms), i.e.
once the model (or the pool) is running. Every variant runs --repeat times, interleaved; the table keeps each
one's fastest end to end and its steady rate. Prints a markdown table with the CPU (model, flags), the
precision, and the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import machine, random_checkpoint  # noqa: E402

from vggdet.inference import load_predictor  # noqa: E402
from vggdet.inference.images import run_images  # noqa: E402

DEFAULT_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "bccd", "VOCdevkit", "VOC2007")


OVERRIDES = ["runtime.winograd_tune=false"]


def one_process(ckpt: str, paths: list, out: str) -> None:
    with load_predictor(ckpt, "cpu", overrides=OVERRIDES) as predictor:
        run_images(predictor, paths, out, score_thr=0.5, progress=False)


def on_ray(ckpt: str, paths: list, out: str, workers) -> None:
    from vggdet.inference.ray_data import PredictorFactory, run_images_on_ray

    run_images_on_ray(PredictorFactory(ckpt, overrides=tuple(OVERRIDES)), paths, out, workers, score_thr=0.5)


def timed(run, paths: list, out: str) -> tuple:
    """(seconds for the whole call, images/s between 10 % and 90 % of the annotated copies written)."""
    samples, done = [], threading.Event()

    def count():
        while not done.is_set():
            n = sum(len(files) for _, _, files in os.walk(out)) if os.path.isdir(out) else 0
            samples.append((time.perf_counter(), n))
            time.sleep(0.02)

    watcher = threading.Thread(target=count, daemon=True)
    t = time.perf_counter()
    watcher.start()
    run(paths, out)
    total = time.perf_counter() - t
    done.set()
    watcher.join()
    lo, hi = 0.1 * len(paths), 0.9 * len(paths)
    t_lo = next(t for t, n in samples if n >= lo)
    t_hi = next((t for t, n in samples if n >= hi), samples[-1][0])
    return total, (hi - lo) / max(t_hi - t_lo, 1e-9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bccd_tiny.py")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--repeat", type=int, default=2, help="runs of every variant (the fastest is kept)")
    p.add_argument("--root", default=DEFAULT_ROOT, help="a VOC2007 folder with JPEGImages/")
    a = p.parse_args()
    import ray

    from vggdet.inference.ray_data import Workers

    folder = os.path.join(a.root, "JPEGImages")
    jpgs = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jpg"))[:a.images]
    if len(jpgs) < a.images:
        sys.exit(f"{folder}: {len(jpgs)} JPEGs, fewer than --images {a.images}")
    cores = os.cpu_count()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = random_checkpoint(os.path.join(tmp, "model.pth"), a.config)
        with load_predictor(ckpt, "cpu", overrides=OVERRIDES) as predictor:  # what arithmetic every variant runs
            precision = predictor.precision_text()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="warning")
        variants = {"one process": lambda paths, out: one_process(ckpt, paths, out),
                    f"ray 1 x {cores} CPUs": lambda paths, out: on_ray(ckpt, paths, out, Workers(1, cores, 0)),
                    f"ray {cores} x 1 CPU": lambda paths, out: on_ray(ckpt, paths, out, Workers(cores, 1, 0))}
        best: dict = {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for k in range(a.repeat):
                    for name, run in variants.items():
                        total, steady = timed(run, jpgs, os.path.join(tmp, f"{name}{k}"))
                        print(f"{name}: {len(jpgs)} images {total:.1f} s, steady {steady:.2f} images/s",
                              file=sys.stderr)
                        if name not in best or total < best[name][0]:
                            best[name] = (total, steady)
        finally:
            ray.shutdown()
    print(f"\n{machine()}, ray {ray.__version__}, "
          f"{a.config} random weights, precision {precision}, {len(jpgs)} BCCD 640x480 JPEGs; load average "
          f"before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}\n")
    base = len(jpgs) / best["one process"][0]
    print("| run | end to end, images/s | steady, images/s | vs one process (end to end) |\n|---|---|---|---|")
    for name, (total, steady) in best.items():
        rate = len(jpgs) / total
        print(f"| {name} | {rate:.2f} | {steady:.2f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
