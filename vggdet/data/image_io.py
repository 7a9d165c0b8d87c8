"""Reading images as stored on disk: uint8 HxWx3 RGB, no EXIF rotation, any bit depth or channel count."""
from __future__ import annotations

import os
from typing import Optional

import cv2
import numpy as np
from PIL import Image

from .errors import DataError

__all__ = ["read_image", "read_image_size", "cached_image_size", "decode_image", "image_size"]

# IGNORE_ORIENTATION: boxes are annotated on the pixels as stored; UNCHANGED: keep 16-bit / alpha so we
# convert them ourselves instead of letting cv2 guess.
_FLAGS = cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_UNCHANGED


def read_image(path: str, name: Optional[str] = None) -> np.ndarray:
    """Decode `path` (JPEG, PNG, ...) into a uint8 [H, W, 3] RGB array; DataError naming `name` (default:
    `path`) if it cannot be read."""
    name = path if name is None else name
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        raise DataError(f"{name}: image file not found or unreadable") from None
    return decode_image(data, name)


def decode_image(data, name: str = "image") -> np.ndarray:
    """An encoded image (bytes or a uint8 array: an upload, an object store blob) -> uint8 [H, W, 3] RGB,
    decoded exactly as `read_image` decodes a file; DataError naming `name` if it cannot be decoded."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    img = cv2.imdecode(buf, _FLAGS) if buf.size else None
    if img is None:
        raise DataError(f"{name}: cannot decode image (corrupt or unsupported format)")
    return to_rgb8(img)


def image_size(data, name: str = "image") -> tuple:
    """(h, w) of an encoded image from its header only, without decoding the pixels (a 30000x30000 PNG is
    not decompressed to find out); DataError naming `name` when there is no readable header."""
    import io

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # PIL's bomb check: the caller judges the size
    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            w, h = im.size
    except Exception as e:
        raise DataError(f"{name}: cannot read image header ({type(e).__name__})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return h, w


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
