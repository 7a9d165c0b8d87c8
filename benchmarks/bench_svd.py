"""Truncated-SVD speed-up (Fast R-CNN §3.1): the RoI head and whole detection, full vs compressed fc6/fc7.

    python benchmarks/bench_svd.py CHECKPOINT [--rank-fc6 1024] [--rank-fc7 256] [--images 20]
                                   [--image-dir DIR] [--device cpu] [--threads 2] [--runs 5]

CHECKPOINT may be `random` (default VGG16 config, random weights: speed only). Images: the .jpg/.png
files of --image-dir (e.g. the test set's JPEGImages), else generated 500x375 images. The compressed
model is made in memory with `vggdet.deploy.svd.compress_fc` (the same factors tools/compress_svd.py writes).
Also prints how many of the full model's confident detections (score >= 0.5) the compressed one
reproduces (same label, IoU >= 0.5); the mAP change is measured with tools/test_det.py on the
checkpoint that tools/compress_svd.py writes.
"""
from __future__ import annotations

import argparse
import copy
import glob
import os
import sys

import torch
from torchvision.ops import box_iou

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import jpeg_like_images, machine, median, timed  # noqa: E402

from vggdet import build_detector, load_config  # noqa: E402
from vggdet.deploy.svd import compress_fc  # noqa: E402


def load_model(checkpoint: str, device: str):
    if checkpoint == "random":
        torch.manual_seed(0)
        return build_detector(load_config(None, [])).to(device).eval()
    from vggdet.inference.torch_backend import Detector

    return Detector.from_checkpoint(checkpoint, device=device).model


def load_images(a) -> list:
    if not a.image_dir:
        return jpeg_like_images(a.images, device=a.device)
    from vggdet.data.image_io import read_image

    files = sorted(glob.glob(os.path.join(a.image_dir, "*.jpg")) + glob.glob(os.path.join(a.image_dir, "*.png")))
    if not files:
        raise SystemExit(f"--image-dir {a.image_dir}: no .jpg/.png files")
    return [torch.from_numpy(read_image(f)).permute(2, 0, 1).to(a.device) for f in files[: a.images]]


def fc_params(head) -> int:
    return sum(p.numel() for m in (head.fc6, head.fc7) for p in m.parameters())


def agreement(full: list, small: list, thresh: float = 0.5) -> tuple[int, int]:
    hit = total = 0
    for f, s in zip(full, small):
        keep = f["scores"] >= thresh
        for box, label in zip(f["boxes"][keep], f["labels"][keep]):
            total += 1
            same = s["labels"] == label
            hit += bool(same.any() and box_iou(box[None], s["boxes"][same]).max() >= 0.5)
    return hit, total


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a vggdet checkpoint, or 'random'")
    p.add_argument("--rank-fc6", type=int, default=1024)
    p.add_argument("--rank-fc7", type=int, default=256)
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--image-dir")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5, help="timed repetitions of the head")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    full = load_model(a.checkpoint, a.device)
    small = copy.deepcopy(full)
    if a.rank_fc6:
        small.roi_head.fc6 = compress_fc(full.roi_head.fc6, a.rank_fc6)
    if a.rank_fc7:
        small.roi_head.fc7 = compress_fc(full.roi_head.fc7, a.rank_fc7)
    images = load_images(a)
    models = {"full": full, f"SVD fc6 r={a.rank_fc6 or '-'}, fc7 r={a.rank_fc7 or '-'}": small}
    head_t = {k: [] for k in models}
    det_t = {k: [] for k in models}
    dets = {k: [] for k in models}
    with torch.inference_mode():
        feats = full.backbone(full.transform(images[:1])[0])
        g = torch.Generator().manual_seed(0)
        xy = torch.rand(300, 2, generator=g) * 500
        rois = [torch.cat([xy, xy + 16 + torch.rand(300, 2, generator=g) * 300], 1).to(a.device)]
        for r in range(a.runs + 1):
            for k, m in (models.items() if r % 2 == 0 else list(models.items())[::-1]):
                t = timed(lambda: m.roi_head.predict(feats, rois), a.device)  # noqa: B023
                if r:
                    head_t[k].append(t)
        for i, img in enumerate(images):
            for k, m in (models.items() if i % 2 == 0 else list(models.items())[::-1]):
                out = []
                t = timed(lambda: out.append(m([img])[0]), a.device)  # noqa: B023
                det_t[k].append(t)
                dets[k].append(out[0])
    hit, total = agreement(*dets.values())
    base_head, base_det = median(head_t["full"]), median(det_t["full"])
    print(f"\nMachine: {machine(a.device)}; checkpoint {a.checkpoint}; {len(images)} images"
          f"{' from ' + a.image_dir if a.image_dir else ' (generated 500x375)'}\n")
    print("| model | fc6+fc7 params | head, 300 RoIs (ms) | speed-up | detection s / image | speed-up |")
    print("|---|---|---|---|---|---|")
    for k, m in models.items():
        h, d = median(head_t[k]), median(det_t[k])
        print(f"| {k} | {fc_params(m.roi_head) / 1e6:.1f} M | {h * 1e3:.0f} | {base_head / h:.2f}x | {d:.3f} | "
              f"{base_det / d:.2f}x |")
    print(f"\nConfident detections (score >= 0.5) of the full model reproduced by the SVD model: {hit}/{total}")


if __name__ == "__main__":
    main()
