"""Drawing boxes with class names and scores: annotated images and video frames (tools/infer.py), dataset
browsing (tools/browse_dataset.py)."""
from __future__ import annotations

import colorsys
from typing import Optional, Sequence

import cv2
import numpy as np


def class_color(index: int) -> tuple:
    """A distinct, saturated RGB colour per class index (golden-ratio hue steps)."""
    h = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    names: Sequence[str],
    scores: Optional[Sequence[float]] = None,
    class_ids: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """Return a copy of `image` (HxWx3 uint8 RGB) with xyxy `boxes` [N,4] and labels drawn.

    Text sits on a filled box of the class colour, in black or white by the colour's luminance, so it
    stays readable on light and dark photos alike.
    """
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 300))
    font_scale = max(0.35, min(h, w) / 900)
    for i, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        cid = class_ids[i] if class_ids is not None else abs(hash(names[i])) % 97
        color = class_color(int(cid))
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        text = names[i] if scores is None else f"{names[i]} {float(scores[i]):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(h - 1, y1 + th + base + 2)
        tx = max(0, min(x1, w - tw - 3))  # keep the label inside the image near the right edge
        cv2.rectangle(out, (tx, ty - th - base), (tx + tw + 2, ty + 1), color, -1)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        cv2.putText(out, text, (tx + 1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink, 1, cv2.LINE_AA)
    return out


def draw_detections(image_rgb: np.ndarray, det: dict) -> np.ndarray:
    """`draw_boxes` for a predictor's detections {"boxes", "names", "scores", "labels"}."""
    return draw_boxes(image_rgb, det["boxes"], det["names"], det["scores"], [int(c) for c in det["labels"]])
