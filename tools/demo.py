"""`make demo`: train configs/shapes_tiny.py on generated shapes (CPU-friendly), report mAP and time, then
run tools/infer.py on a few held-out test images so you can look at the detections."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    os.chdir(ROOT)
    work = os.path.join("work_dirs", "shapes_tiny")
    start = time.time()
    rc = subprocess.call([sys.executable, "tools/train_det.py", "configs/shapes_tiny.py", "--work-dir", work,
                          *sys.argv[1:]])
    if rc != 0:
        return rc
    minutes = (time.time() - start) / 60
    with open(os.path.join("data", "shapes", "ImageSets", "Main", "test.txt")) as f:
        ids = [line.strip() for line in f if line.strip()][:6]
    images = [os.path.join("data", "shapes", "JPEGImages", f"{i}.jpg") for i in ids]
    out = os.path.join(work, "demo_images")
    rc = subprocess.call([sys.executable, "tools/infer.py", os.path.join(work, "latest.pth"), *images,
                          "--out", out, "--score-thr", "0.5"])
    print(f"\ndemo: trained and evaluated in {minutes:.1f} min; annotated test images in {out}/ "
          f"({len(glob.glob(os.path.join(out, '*.jpg')))} files)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
