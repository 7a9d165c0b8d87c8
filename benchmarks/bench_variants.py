"""mAP and time per image of a checkpoint under inference options: NMS variants and test-time augmentation.

    python benchmarks/bench_variants.py CKPT [--set data.root=...] [--variants plain,soft_linear,...]

Each variant is `key=value` overrides on the checkpoint's embedded config, run through the same
dataset evaluation as tools/test_det.py, one after another in one process; prints a markdown table with
the machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine  # noqa: E402

from vggdet.inference.dataset import evaluate_checkpoint  # noqa: E402

VARIANTS = {
    "plain": [],
    "soft_linear": ["model.roi_head.nms=soft_linear"],
    "soft_gaussian": ["model.roi_head.nms=soft_gaussian"],
    "class_agnostic": ["model.roi_head.class_agnostic_nms=true"],
    "tta_hflip": ["test.tta.hflip=true"],
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list from {list(VARIANTS)}")
    p.add_argument("--tta-scales", default="", help="e.g. 192,320: adds a tta_hflip_scales variant")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[])
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    variants = {k: VARIANTS[k] for k in a.variants.split(",")}
    if a.tta_scales:
        variants["tta_hflip_scales"] = ["test.tta.hflip=true", f"test.tta.scales=[{a.tta_scales}]"]
    from vggdet.data import build_dataset
    from vggdet.training.checkpoint import load_detector

    _, cfg, _ = load_detector(a.checkpoint, overrides=a.set)
    images = len(build_dataset(cfg, "test"))
    rows = []
    for name, over in variants.items():
        start = time.perf_counter()
        m = evaluate_checkpoint(a.checkpoint, overrides=["runtime.device=cpu", *a.set, *over])
        seconds = time.perf_counter() - start
        rows.append((name, " ".join(over) or "(defaults)", 100 * m["mAP"], seconds / images))
        print(f"{name}: mAP {100 * m['mAP']:.2f} in {seconds:.1f} s", file=sys.stderr, flush=True)
    print(f"\nMachine: {machine('cpu')}; {a.checkpoint}; {cfg.test.metric} mAP on the {images} test images\n")
    print("| variant | overrides | mAP (%) | s / image (whole evaluation) |\n|---|---|---|---|")
    for name, over, m, s in rows:
        print(f"| {name} | `{over}` | {m:.2f} | {s:.3f} |")


if __name__ == "__main__":
    main()
