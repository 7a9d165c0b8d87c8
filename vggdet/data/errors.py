"""The one exception type of the data package, and warn-once helpers."""
from __future__ import annotations

import warnings

__all__ = ["DataError", "warn_once"]


class DataError(ValueError):
    """Bad input data; the message is one line naming the file and what was wrong or expected."""


_warned: set = set()


def warn_once(key: str, message: str) -> None:
    """Warn the first time `key` (usually a file path plus a reason) is seen in this process."""
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, stacklevel=3)
