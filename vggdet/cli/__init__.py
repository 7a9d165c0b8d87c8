"""The command-line tools (`vggdet-train`, ... and `python tools/*.py`) and the one wrapper they share.

`command(main)` maps the package's errors to a one-line message and an exit status, the same for every
tool: 0 ok, 2 bad input (config, data, checkpoint, arguments: every such error is a ValueError subclass
naming the file or key), 1 a runtime failure, 130 / 143 interrupted by SIGINT / SIGTERM.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings
from typing import Callable, Optional

from vggdet.errors import Interrupted

__all__ = ["command", "prog", "split_set_items", "add_set_argument", "add_runtime_arguments", "runtime_overrides",
           "add_results_arguments", "voc_classes_argument", "print_evaluation"]


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"warning: {' '.join(str(message).split())}\n"  # no file:line and echoed source for users


def command(main: Callable[[Optional[list]], int]) -> Callable[[Optional[list]], int]:
    """Decorate a tool's `main(argv) -> exit status` with the shared error handling."""

    @functools.wraps(main)
    def run(argv: Optional[list] = None) -> int:
        warnings.formatwarning = _one_line_warning
        try:
            return _run(main, argv)
        finally:
            from vggdet.fileio import remove_unused_folders

            remove_unused_folders()  # output folders a failed run never wrote into

    return run


def _run(main: Callable[[Optional[list]], int], argv: Optional[list]) -> int:
    """`main(argv)` with the package's errors mapped to one line and an exit status."""
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


def prog(script: str) -> str:
    """The name the tool was run by, for its usage line: `vggdet-infer`, or `infer.py` for the script (and
    when called from Python)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith("vggdet-") else script


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


def add_results_arguments(p: argparse.ArgumentParser) -> None:
    """Ground truth and results, the same for eval_det and analyze_det: --voc-root | --coco-ann, --results,
    --split, --classes."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--voc-root", help="a VOC2007-style folder (Annotations/, ImageSets/Main/)")
    src.add_argument("--coco-ann", help="COCO instances JSON (ground truth)")
    p.add_argument("--results", required=True, help="VOC: folder of comp4_det_<split>_<class>.txt; COCO: JSON")
    p.add_argument("--split", default="test", help="VOC split (ImageSets/Main/<split>.txt)")
    p.add_argument("--classes", default=None,
                   help="comma-separated VOC class names, or 'auto' (from the XML files); default: from the "
                        "results file names (the 20 VOC classes when all of them are VOC classes)")


def voc_classes_argument(text: Optional[str]):
    """--classes -> None (from the results files), "auto" or a list of names."""
    if text is None or text == "auto":
        return text
    return [c.strip() for c in text.split(",")]


def print_evaluation(path: str, config: Optional[str], overrides: list, out: str, analysis: bool = False) -> int:
    """Evaluate a model file on its test split; print the table (and the analysis summary); the results
    files and metrics.json go to `out`, the report to `out`/report (tools/test_det.py, and train_det.py's
    deprecated --eval-only)."""
    import os

    from vggdet.evaluation import format_table, tide_summary
    from vggdet.inference.dataset import evaluate_file

    report_dir = os.path.join(out, "report") if analysis else None
    result = evaluate_file(path, config, overrides, results_dir=out, analysis_dir=report_dir)
    if result is None:  # not the main process of several
        return 0
    print(format_table(result.metrics))
    print(f"precision: {result.precision}; results and metrics.json written to {out}")
    if result.analysis is not None:
        print(tide_summary(result.analysis))
        print(f"report written to {os.path.join(report_dir, 'report.html')}")
    return 0
