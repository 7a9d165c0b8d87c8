"""Images/s on Ray Data (1 and 2 actors) against the one-process run: the same images, the same model, one run.

    python benchmarks/bench_ray.py [--config configs/bccd_tiny.py] [--images 32] [--repeat 2] [--root DIR]

The model is the config's network with seeded random weights (speed does not depend on training), saved as
a checkpoint that every variant loads; the images are the first 2 x --images BCCD JPEGs (640x480), batch 1,
no drawing, score threshold 0.5, the Winograd choice by the fixed rule (runtime.winograd_tune=false: no
per-process timing inside the measurement). Variants:
  one process     run_images (what tools/infer.py runs), torch threads = all cores
  ray 1 x C       run_images_on_ray with 1 actor of C = all cores (its model's threads)
  ray N x 1       N actors of 1 CPU each (N = the cores)
on one local Ray instance (all cores, no dashboard), started once. Each variant runs on --images and on
twice as many images, both timed from the call to its return (model loading and, on Ray, the actor pool's
start included): "end to end" is 2N images / t(2N), "steady" is N / (t(2N) - t(N)), the rate once the pool
is up. Every variant runs --repeat times, interleaved; the table keeps each one's fastest. Prints a
markdown table with the CPU (model, flags) and the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from vggdet import build_detector, load_config  # noqa: E402
from vggdet.inference import load_predictor  # noqa: E402
from vggdet.inference.images import run_images  # noqa: E402
from vggdet.runtime import cpu_flags, cpu_model  # noqa: E402
from vggdet.training.checkpoint import save_checkpoint  # noqa: E402

DEFAULT_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "bccd", "VOCdevkit", "VOC2007")


def make_checkpoint(config: str, folder: str) -> str:
    cfg = load_config(config, ["model.backbone.weights=null"])
    torch.manual_seed(0)
    path = os.path.join(folder, "model.pth")
    save_checkpoint(path, {"model": build_detector(cfg).state_dict(), "config": cfg.to_dict(),
                           "classes": list(cfg.data.classes) if isinstance(cfg.data.classes, list)
                           else [f"class{k}" for k in range(1, cfg.model.num_classes + 1)]})
    return path


OVERRIDES = ["runtime.winograd_tune=false"]


def one_process(ckpt: str, paths: list, out: str) -> float:
    t = time.perf_counter()
    with load_predictor(ckpt, "cpu", overrides=OVERRIDES) as predictor:
        run_images(predictor, paths, out, score_thr=0.5, draw=False, progress=False)
    return time.perf_counter() - t


def on_ray(ckpt: str, paths: list, out: str, workers) -> float:
    from vggdet.inference.ray_data import PredictorFactory, run_images_on_ray

    t = time.perf_counter()
    run_images_on_ray(PredictorFactory(ckpt, overrides=tuple(OVERRIDES)), paths, out, workers, score_thr=0.5,
                      draw=False)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bccd_tiny.py")
    p.add_argument("--images", type=int, default=32, help="N: each variant runs N and 2N images")
    p.add_argument("--repeat", type=int, default=2, help="runs of every variant (the fastest is kept)")
    p.add_argument("--root", default=DEFAULT_ROOT, help="a VOC2007 folder with JPEGImages/")
    a = p.parse_args()
    import ray

    from vggdet.inference.ray_data import Workers

    folder = os.path.join(a.root, "JPEGImages")
    jpgs = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jpg"))
    if len(jpgs) < 2 * a.images:
        sys.exit(f"{folder}: {len(jpgs)} JPEGs, --images {a.images} needs {2 * a.images}")
    cores = os.cpu_count()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(a.config, tmp)
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="warning")
        variants = {"one process": lambda n, out: one_process(ckpt, jpgs[:n], out),
                    f"ray 1 x {cores} CPUs": lambda n, out: on_ray(ckpt, jpgs[:n], out, Workers(1, cores, 0)),
                    f"ray {cores} x 1 CPU": lambda n, out: on_ray(ckpt, jpgs[:n], out, Workers(cores, 1, 0))}
        best: dict = {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for k in range(a.repeat):
                    for name, run in variants.items():
                        t1 = run(a.images, os.path.join(tmp, f"{name}{k}", "n"))
                        t2 = run(2 * a.images, os.path.join(tmp, f"{name}{k}", "2n"))
                        print(f"{name}: {a.images} images {t1:.1f} s, {2 * a.images} images {t2:.1f} s",
                              file=sys.stderr)
                        if name not in best or t2 < best[name][1]:
                            best[name] = (t1, t2)
        finally:
            ray.shutdown()
        rows = [(name, *best[name]) for name in variants]
    flags = " ".join(sorted(f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma")))
    print(f"\n{cpu_model()} ({cores} cores; {flags or 'no flags read'}), torch {torch.__version__}, ray {ray.__version__}, "
          f"{a.config} random weights, {2 * a.images} BCCD 640x480 JPEGs; load average before "
          f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}\n")
    base = 2 * a.images / rows[0][2]
    print("| run | end to end, images/s | steady, images/s | vs one process (end to end) |\n|---|---|---|---|")
    for name, t1, t2 in rows:
        rate = 2 * a.images / t2
        steady = a.images / (t2 - t1) if t2 > t1 else float("nan")
        print(f"| {name} | {rate:.2f} | {steady:.2f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
