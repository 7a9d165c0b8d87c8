"""Reading images as stored on disk: uint8 HxWx3 RGB, no EXIF rotation, any bit depth or channel count."""
from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image

from .errors import DataError

__all__ = ["read_image", "read_image_size", "cached_image_size"]

# IGNORE_ORIENTATION: boxes are annotated on the pixels as stored; UNCHANGED: keep 16-bit / alpha so we
# convert them ourselves instead of letting cv2 guess.
_FLAGS = cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_UNCHANGED


def read_image(path: str) -> np.ndarray:
    """Decode `path` (JPEG, PNG, ...) into a uint8 [H, W, 3] RGB array; DataError if it cannot be read."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        raise DataError(f"{path}: image file not found or unreadable") from None
    img = cv2.imdecode(data, _FLAGS) if data.size else None
    if img is None:
        raise DataError(f"{path}: cannot decode image (corrupt or unsupported format)")
    return to_rgb8(img)


def to_rgb8(img: np.ndarray) -> np.ndarray:
    """cv2's BGR / BGRA / gray array of any integer depth -> uint8 RGB."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)  # top byte: the same scaling as 65535 -> 255
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image_size(path: str) -> tuple:
    """(h, w) from the file header only, without decoding the pixels (EXIF orientation ignored)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read image header ({type(e).__name__})") from None
    return h, w


# (absolute path, mtime_ns, file size) -> (h, w), for the life of the process. Not on disk: a header read
# costs ~75 us against ~3 us for the stat that validates an entry (BCCD JPEGs, warm page cache), ~1 s per
# 13k images at start-up, and data folders are often read-only or shared (../shared/data here), so a cache
# file beside the labels could not always be written. Building a split again in the same process
# (notebooks, tests, tools called from Python) reads no header twice; a replaced image is read again.
_sizes: dict = {}


def cached_image_size(path: str) -> tuple:
    """`read_image_size(path)`, read once per process for each version of the file."""
    try:
        st = os.stat(path)
    except OSError:
        raise DataError(f"{path}: image file not found") from None
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    if key not in _sizes:
        _sizes[key] = read_image_size(path)
    return _sizes[key]
