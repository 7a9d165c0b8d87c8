"""The command-line tools (`vggdet-train`, ... and `python tools/*.py`) and the one wrapper they share.

`command(main)` maps the package's errors to a one-line message and an exit status, the same for every
tool: 0 ok, 2 bad input (config, data, checkpoint, arguments: every such error is a ValueError subclass
naming the file or key), 1 a runtime failure, 130 / 143 interrupted by SIGINT / SIGTERM.
"""
from __future__ import annotations

import argparse
import functools
import sys
import warnings
from typing import Callable, Optional

from vggdet.errors import Interrupted

__all__ = ["command", "split_set_items", "add_set_argument", "add_runtime_arguments", "runtime_overrides"]


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"warning: {' '.join(str(message).split())}\n"  # no file:line and echoed source for users


def command(main: Callable[[Optional[list]], int]) -> Callable[[Optional[list]], int]:
    """Decorate a tool's `main(argv) -> exit status` with the shared error handling."""

    @functools.wraps(main)
    def run(argv: Optional[list] = None) -> int:
        warnings.formatwarning = _one_line_warning
        try:
            return main(argv)
        except Interrupted as e:
            print(str(e), file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
            print(f"error: {_first_line(e)}", file=sys.stderr)
            return 2
        except (RuntimeError, OSError) as e:  # TrainingError, CUDA failures, a full disk
            print(f"error: {_first_line(e)}", file=sys.stderr)
            return 1

    return run


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def split_set_items(argv: Optional[list]) -> list:
    """`--set a=1 CONFIG` -> `CONFIG --set a=1`: after --set only `key=value` items belong to it, so a
    positional after the overrides is never swallowed. One rule for every tool."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, items, in_set = [], [], False
    for tok in argv:
        if tok == "--set":
            in_set = True
        elif tok.startswith("--set="):
            items.append(tok[len("--set="):])
        elif in_set and "=" in tok and not tok.startswith("-"):
            items.append(tok)
        else:
            in_set = False
            rest.append(tok)
    return rest + (["--set", *items] if items else [])


def add_set_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. --set model.roi_head.pool=align data.root=/data (values are "
                        "Python literals; null, lists, bare words as strings)")


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: runtime.device)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="autocast: float16 on CUDA, bfloat16 on the CPU, or runtime.amp_dtype "
                        "(default: runtime.amp)")


def runtime_overrides(args: argparse.Namespace) -> list:
    """--device / --amp as `runtime.*` overrides, placed before the user's --set items."""
    out = []
    if getattr(args, "device", None) is not None:
        out.append(f"runtime.device={args.device}")
    if getattr(args, "amp", None) is not None:
        out.append(f"runtime.amp={args.amp}")
    return out + list(getattr(args, "set", []))
