"""Training speed: seconds per iteration, vggdet vs the torchvision FasterRCNN twin (same parts/weights).

    python benchmarks/bench_train.py [--threads 2] [--iters 3] [--batch 1 2] [--size 600 800]
                                     [--device cpu|cuda] [--amp [--amp-dtype float16|bfloat16]]

Same SGD (lr 0.001, momentum 0.9, weight decay 5e-4), same frozen layers (conv1, conv2), the same
generated images and boxes; 12000 -> 2000 proposals, 256 anchors and 128 RoIs per image in both.
Iterations of the two models are interleaved (alternating order) so a shared machine slows both alike;
the table gives the median after --warmup iterations. --amp: autocast (fp16 on CUDA, bf16 on CPU) with
a GradScaler for fp16. On CUDA also images/s and peak GPU memory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import autocast, jpeg_like_images, machine, median, random_targets, timed, torchvision_twin  # noqa: E402

from vggdet import build_detector, load_config  # noqa: E402


def make_step(model, device, amp_dtype):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=amp_dtype == "float16")

    def step(images, targets):
        with autocast(device, amp_dtype):
            losses = model(images, targets)
            loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss.detach())
    return step


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=3, help="timed iterations per model and batch size")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    p.add_argument("--size", type=int, nargs=2, default=[600, 800], metavar=("H", "W"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--amp-dtype", default=None, choices=["float16", "bfloat16"])
    p.add_argument("--variants", default="vggdet,torchvision")
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument("--json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cuda = a.device.startswith("cuda")
    amp = (a.amp_dtype or ("float16" if cuda else "bfloat16")) if a.amp else None
    h, w = a.size
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.num_classes={a.num_classes}", f"model.input.min_size={min(h, w)}",
                             f"model.input.max_size={max(h, w)}"])
    vgg = build_detector(cfg).to(a.device).train()
    variants = a.variants.split(",")
    models = {"vggdet": vgg, "torchvision": torchvision_twin(vgg).train()}
    steps = {v: make_step(models[v], a.device, amp) for v in variants}
    nb = max(a.batch)
    images = jpeg_like_images(nb, h, w, device=a.device)
    targets = random_targets(nb, h, w, a.num_classes, device=a.device)
    times = {(v, b): [] for v in variants for b in a.batch}
    peak = {(v, b): 0.0 for v in variants for b in a.batch}
    for b in a.batch:
        for i in range(a.warmup + a.iters):
            for v in (variants if i % 2 == 0 else variants[::-1]):
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                t = timed(lambda: steps[v](images[:b], targets[:b]), a.device)  # noqa: B023
                if cuda:
                    peak[(v, b)] = max(peak[(v, b)], torch.cuda.max_memory_allocated() / 2**20)
                if i >= a.warmup:
                    times[(v, b)].append(t)
            print(f"batch {b} iter {i + 1}: " + ", ".join(f"{v} {times[(v, b)][-1] if times[(v, b)] else 0:.3f}s"
                                                          for v in variants), file=sys.stderr, flush=True)
    print(f"\nMachine: {machine(a.device)}; device {a.device}; amp {amp or 'off'}; images {h}x{w}; "
          f"median of {a.iters} iterations after {a.warmup} warm-up\n")
    print("| model | batch | s / iteration | images / s | speed-up vs torchvision | peak GPU MiB |")
    print("|---|---|---|---|---|---|")
    for b in a.batch:
        base = median(times.get(("torchvision", b), []))
        for v in variants:
            s = median(times[(v, b)])
            print(f"| {v} | {b} | {s:.3f} | {b / s:.2f} | {base / s:.2f}x | {peak[(v, b)]:.0f} |" if cuda else
                  f"| {v} | {b} | {s:.3f} | {b / s:.2f} | {base / s:.2f}x | - |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(a.device), "amp": amp, "size": a.size,
                       "s_per_iter": {f"{v}@{b}": median(t) for (v, b), t in times.items()},
                       "peak_gpu_mib": {f"{v}@{b}": m for (v, b), m in peak.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
