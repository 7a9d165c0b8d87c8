"""Exceptions that end a run, shared by the trainer and the command-line wrapper (vggdet/cli).

Bad input everywhere is a ValueError subclass named for where it was found (ConfigError, DataError,
EvalError, CheckpointError, WeightsError, SVDError): the tools report those as one line and exit 2.
"""
from __future__ import annotations

import signal
from typing import Optional

__all__ = ["TrainingError", "Interrupted", "first_line"]


class TrainingError(RuntimeError):
    """A run that must stop (NaN loss, out of memory); the message says why and what to try."""


class Interrupted(Exception):
    """SIGINT / SIGTERM arrived: latest.pth was saved; `exit_code` is 130 or 143."""

    def __init__(self, signum: int, path: Optional[str]):
        super().__init__(f"stopped by {signal.Signals(signum).name}: saved {path}; continue with --resume auto")
        self.exit_code = 128 + signum


def first_line(e: BaseException, empty: Optional[str] = None) -> str:
    """The first line of an exception's message, for one-line errors; `empty` (default: the exception's type
    name) when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else (type(e).__name__ if empty is None else empty)
