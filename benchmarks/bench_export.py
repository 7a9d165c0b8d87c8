"""ONNX export: file sizes of the full VGG16, and detection parity of onnxruntime with PyTorch.

    python benchmarks/bench_export.py sizes [--out DIR]
        configs/voc_vgg16.py (21 classes, random weights) as .pth, .onnx, .onnx --svd 1024,256, --fp16, both
    python benchmarks/bench_export.py parity CHECKPOINT [--set k=v ...]
        PyTorch (as shipped: Winograd, channels_last) vs onnxruntime on images of many sizes, at batch 1 and
        on same-size batches of 4; prints the worst box / score difference per image

Speed: benchmarks/bench_infer.py --variants vggdet,torchvision,onnxruntime.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile

import cv2
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine, random_checkpoint  # noqa: E402

from vggdet import Detector  # noqa: E402
from vggdet.deploy.export import export_onnx  # noqa: E402
from vggdet.inference.onnx_backend import OnnxPredictor  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")


def sizes(out: str) -> None:
    pth = random_checkpoint(os.path.join(out, "voc_vgg16.pth"), os.path.join(ROOT, "configs", "voc_vgg16.py"))
    rows = [(".pth (weights only)", pth)]
    for name, kw in (("model.onnx", {}), ("svd.onnx", {"svd": (1024, 256)}), ("fp16.onnx", {"fp16": True}),
                     ("svd_fp16.onnx", {"svd": (1024, 256), "fp16": True})):
        export_onnx(pth, os.path.join(out, name), **kw)
        rows.append((f".onnx {kw or ''}", os.path.join(out, name)))
    print(f"\nMachine: {machine('cpu')}; configs/voc_vgg16.py, 21 classes, random weights\n")
    print("| file | MB | MiB |\n|---|---|---|")
    for label, path in rows:
        b = os.path.getsize(path)
        print(f"| {label} | {b / 1e6:.1f} | {b / 2**20:.1f} |")


def test_images() -> dict:
    """Real photos of several sizes from ../shared/data plus generated odd sizes."""
    paths = sorted(glob.glob(os.path.join(SHARED, "bccd", "VOCdevkit", "VOC2007", "JPEGImages", "*.jpg")))[:4]
    paths += sorted(glob.glob(os.path.join(SHARED, "coco128", "train2017", "*.jpg")))[:8]
    out = {os.path.basename(p): cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in paths}
    first = next(iter(out.values()))
    out.update({"64x64": cv2.resize(first, (64, 64)), "1000x200": cv2.resize(first, (1000, 200)),
                "portrait 300x700": cv2.resize(first, (300, 700)), "blank 320x240": np.zeros((240, 320, 3), np.uint8)})
    return out


def diff(ref: dict, got: dict) -> tuple:
    same = len(ref["boxes"]) == len(got["boxes"]) and ref["labels"].tolist() == got["labels"].tolist()
    if not same or not len(ref["boxes"]):
        return same, 0.0, 0.0
    return same, float(np.abs(ref["boxes"] - got["boxes"]).max()), float(np.abs(ref["scores"] - got["scores"]).max())


def mixed_batch_effect(det, images: list) -> None:
    """FasterRCNN.forward on a padded mixed-size batch vs one image at a time (what the predictors avoid)."""
    tensors = [torch.from_numpy(im).permute(2, 0, 1).contiguous() for im in images]
    with torch.inference_mode():
        batch = det.model(tensors)
        single = [det.model([t])[0] for t in tensors]
    total = sum(len(s["boxes"]) for s in single)
    differ = 0
    for b, s in zip(batch, single):
        n = max(len(b["boxes"]), len(s["boxes"]))
        same = min(len(b["boxes"]), len(s["boxes"]))
        close = (b["labels"][:same] == s["labels"][:same]) & ((b["boxes"][:same] - s["boxes"][:same]).abs()
                                                               .amax(1) <= 0.5)
        differ += n - int(close.sum())
    sizes = ", ".join(f"{t.shape[1]}x{t.shape[2]}" for t in tensors)
    print(f"\nFasterRCNN.forward on one padded batch of {sizes} vs one image at a time: {differ} of {total} "
          "detections differ (count, label or box > 0.5 px); both predictors run one forward per size")


def parity(checkpoint: str, overrides: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "m.onnx")
        export_onnx(checkpoint, onnx_path, overrides=overrides)
        ref_det = Detector.from_checkpoint(checkpoint, device="cpu", overrides=overrides)
        onnx_det = OnnxPredictor(onnx_path)
        images = test_images()
        print(f"\nMachine: {machine('cpu')}; {checkpoint}\n")
        print("| image | H x W | detections PyTorch / ORT | same labels | max abs box diff px | max abs score diff |")
        print("|---|---|---|---|---|---|")
        worst = [True, 0.0, 0.0, 0]
        for name, im in images.items():
            ref, got = ref_det.predict(im), onnx_det.predict(im)
            same, db, ds = diff(ref, got)
            worst = [worst[0] and same, max(worst[1], db), max(worst[2], ds), worst[3] + len(ref["boxes"])]
            print(f"| {name} | {im.shape[0]}x{im.shape[1]} | {len(ref['boxes'])} / {len(got['boxes'])} | {same} | "
                  f"{db:.2e} | {ds:.2e} |")
        by_size: dict = {}
        for im in images.values():
            by_size.setdefault(im.shape, []).append(im)
        batches = [ims[:4] for ims in by_size.values() if len(ims) >= 2]
        for batch in batches:
            for r, g in zip(ref_det.predict_batch(batch), onnx_det.predict_batch(batch)):
                same, db, ds = diff(r, g)
                worst = [worst[0] and same, max(worst[1], db), max(worst[2], ds), worst[3] + len(r["boxes"])]
        mixed_batch_effect(ref_det, list(images.values())[3:7])
        print(f"\n{len(images)} images at batch 1 and {sum(map(len, batches))} in {len(batches)} same-size batches: "
              f"{worst[3]} detections, all counts and labels equal: {worst[0]}, max box diff {worst[1]:.2e} px, "
              f"max score diff {worst[2]:.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["sizes", "parity"])
    p.add_argument("checkpoint", nargs="?")
    p.add_argument("--out", default=None, help="sizes: keep the files here (default: a temp folder)")
    p.add_argument("--set", nargs="*", default=[])
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.what == "sizes":
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            return sizes(a.out)
        with tempfile.TemporaryDirectory() as tmp:
            return sizes(tmp)
    if not a.checkpoint:
        p.error("parity needs a CHECKPOINT")
    parity(a.checkpoint, a.set)


if __name__ == "__main__":
    main()
