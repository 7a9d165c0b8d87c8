"""The command-line tools (`vggdet-train`, ... and `python tools/*.py`) and the one wrapper they share.

`command(main)` maps the package's errors to a one-line message and an exit status, the same for every
tool: 0 ok, 2 bad input (config, data, checkpoint, arguments: every such error is a ValueError subclass
naming the file or key), 1 a runtime failure, 130 / 143 interrupted by SIGINT / SIGTERM.
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import warnings
from typing import Callable, Optional

from vggdet.errors import Interrupted, first_line

__all__ = ["command", "prog", "split_set_items", "add_set_argument", "add_runtime_arguments", "runtime_overrides",
           "add_ray_arguments", "add_ray_address", "check_ray_flags", "check_ray_arguments", "ray_workers", "add_results_arguments", "voc_classes_argument",
           "print_evaluation"]


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
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:  # TrainingError, CUDA failures, a full disk
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 1


def prog(script: str) -> str:
    """The name the tool was run by, for its usage line: `vggdet-infer`, or `infer.py` for the script (and
    when called from Python)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith("vggdet-") else script


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


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    """--ray [local|ADDRESS], --workers, --worker-cpus, --worker-gpus: the model on a Ray actor pool
    (vggdet/inference/ray_data.py), the same for infer and test_det."""
    g = p.add_argument_group("Ray (pip install 'vggdet[ray]'; docs/scaling.md)")
    add_ray_address(g, "run the model on Ray Data")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="actors, each with its own predictor (default: as many as the cluster's CPUs / GPUs hold)")
    g.add_argument("--worker-cpus", type=float, default=1.0, metavar="C",
                   help="CPUs per actor, also its model's threads (default 1)")
    g.add_argument("--worker-gpus", type=float, default=0.0, metavar="G",
                   help="GPUs per actor (0.5: two share one); > 0 runs the model on CUDA (default 0)")


def add_ray_address(g, what: str) -> None:
    """--ray [local|ADDRESS]: `what` it does (Ray Data for infer / test_det, Ray Serve for serve)."""
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="local|ADDRESS",
                   help=f"{what}: 'local' (the default) starts Ray on this machine, ADDRESS joins a cluster (auto, "
                        "HOST:PORT of `ray start --head`, ray://HOST:10001)")


def check_ray_flags(p: argparse.ArgumentParser, a: argparse.Namespace, given: dict, gpus: float,
                    gpus_flag: str, who: str) -> None:
    """What every --ray tool checks: the flags that mean something only with --ray (`given`: flag -> whether
    it was set), the address's form, and --device against the GPUs each of `who` (workers, replicas) gets."""
    needs = [flag for flag, set_ in given.items() if set_]
    if a.ray is None and needs:
        p.error(f"{needs[0]} needs --ray")
    if a.ray is not None and not re.fullmatch(r"local|auto|ray://\S+|[^/\s]+:\d+", a.ray):
        p.error(f"--ray {a.ray}: not local, auto, HOST:PORT or ray://HOST:PORT (write --ray local, or put --ray "
                "after the inputs)")
    device = getattr(a, "device", None)
    if a.ray is not None and device not in (None, "auto") and device.startswith("cuda") != (gpus > 0):
        p.error(f"--device {device} with --ray: the {who}' device follows {gpus_flag} (> 0: cuda, 0: cpu)")


def check_ray_arguments(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    check_ray_flags(p, a, {"--workers": a.workers is not None, "--worker-cpus": a.worker_cpus != 1.0,
                           "--worker-gpus": a.worker_gpus != 0.0}, a.worker_gpus, "--worker-gpus", "workers")
    if a.workers is not None and a.workers < 1:
        p.error("--workers must be >= 1")
    if a.worker_cpus <= 0 or a.worker_gpus < 0:
        p.error("--worker-cpus must be > 0 and --worker-gpus >= 0")


def ray_workers(a: argparse.Namespace):
    from vggdet.inference.ray_data import Workers

    return Workers(a.workers, a.worker_cpus, a.worker_gpus)


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


def print_evaluation(path: str, config: Optional[str], overrides: list, out: str, analysis: bool = False,
                     ray: Optional[argparse.Namespace] = None) -> int:
    """Evaluate a model file on its test split; print the table (and the analysis summary); the results
    files and metrics.json go to `out`, the report to `out`/report (tools/test_det.py, and train_det.py's
    deprecated --eval-only). `ray`: the parsed --ray arguments, to predict on a Ray actor pool."""
    import os

    from vggdet.evaluation import format_table, tide_summary

    report_dir = os.path.join(out, "report") if analysis else None
    if ray is not None:
        from vggdet.inference.ray_data import evaluate_file_on_ray, ray_session

        with ray_session(ray.ray):
            result = evaluate_file_on_ray(path, config, overrides, out, report_dir, ray_workers(ray))
    else:
        from vggdet.inference.dataset import evaluate_file

        result = evaluate_file(path, config, overrides, results_dir=out, analysis_dir=report_dir)
    if result is None:  # not the main process of several
        return 0
    print(format_table(result.metrics))
    print(f"precision: {result.precision}; results and metrics.json written to {out}")
    if result.analysis is not None:
        print(tide_summary(result.analysis))
        print(f"report written to {os.path.join(report_dir, 'report.html')}")
    return 0
