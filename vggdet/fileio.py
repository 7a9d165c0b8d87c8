"""Atomic outputs: write beside the final name, then `os.replace`, so a kill or error never leaves a
truncated checkpoint, JSON, image or video under the final name (and no temp file behind)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temp path beside `path` (same extension, for writers that pick a format by it, like
    cv2.VideoWriter); rename it to `path` on success, delete it on any failure."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; outputs get what open() would give
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable) -> None:
    """Call `write(binary_file)` on a temp file, fsync it, then rename it to `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str, obj: Any, indent: int = 2) -> None:
    text = json.dumps(obj, indent=indent)
    atomic_write(path, lambda f: f.write(text.encode()))


class OutputError(ValueError):
    """An output folder that cannot be written; the message names it."""


_CREATED: list = []  # folders ensure_writable made, removed again by remove_unused_folders if still empty


def ensure_writable(folder: str, what: str = "--out") -> None:
    """Create `folder` if needed and check that a file can be written in it, before any slow work starts.

    A real write, not os.access: root passes every permission check except the file system's own. The
    folders made here are remembered: `remove_unused_folders` (the tools call it on exit) deletes those
    that stayed empty, so a run that fails before its first output leaves no empty folder behind.
    """
    missing = []
    parent = os.path.abspath(folder)
    while parent and not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
    try:
        os.makedirs(folder, exist_ok=True)
        _CREATED.extend(missing)
        with tempfile.TemporaryFile(prefix=".tmp_", dir=folder):
            pass
    except OSError as e:
        raise OutputError(f"{what} {folder}: cannot write there ({e.strerror or type(e).__name__})") from None
    free = shutil.disk_usage(folder).free
    if free < 100 << 20:
        warnings.warn(f"{what} {folder}: only {free >> 20} MiB free on that disk", stacklevel=2)


def remove_unused_folders() -> list:
    """Delete the folders `ensure_writable` created that are still empty (deepest first); returns them."""
    removed = []
    for folder in sorted(set(_CREATED), key=len, reverse=True):
        try:
            os.rmdir(folder)  # only an empty folder goes
            removed.append(folder)
        except OSError:
            pass
    _CREATED.clear()
    return removed
