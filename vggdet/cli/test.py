"""mAP of a checkpoint on its config's test split.

    python tools/test_det.py CONFIG CHECKPOINT [--out DIR] [--device D] [--amp] [--set k=v ...]
    python tools/test_det.py CHECKPOINT            # uses the config embedded in the checkpoint
    torchrun --nproc_per_node N tools/test_det.py CHECKPOINT       # test images sharded across ranks

Writes the VOC devkit results files (and COCO JSON for COCO data) and metrics.json into --out (default
<checkpoint folder>/test) and prints the per-class table; --report also writes the error analysis of
tools/analyze_det.py into <out>/report. Also installed as `vggdet-test`.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional

from vggdet.cli import add_runtime_arguments, add_set_argument, command, runtime_overrides, split_set_items


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="test_det.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="[CONFIG] CHECKPOINT")
    p.add_argument("--out", help="results folder (default: <checkpoint folder>/test)")
    p.add_argument("--report", action="store_true",
                   help="also write the error analysis (TIDE, confusion matrix, report.html) into <out>/report")
    add_runtime_arguments(p)
    add_set_argument(p)
    args = p.parse_args(split_set_items(argv))
    if len(args.paths) > 2:
        p.error("expected [CONFIG] CHECKPOINT")
    args.config, args.checkpoint = args.paths if len(args.paths) == 2 else (None, args.paths[0])
    return args


@command
def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "test")
    from vggdet.fileio import ensure_writable

    ensure_writable(out)
    return report(args.checkpoint, args.config, runtime_overrides(args), out, args.report)


def report(checkpoint: str, config: Optional[str], overrides: list, out: str, analysis: bool = False) -> int:
    """Evaluate, print the table, write the results files and metrics.json into `out` (rank 0); with
    `analysis`, also the error-analysis report of the results files into `out`/report."""
    from vggdet.dataset_eval import evaluate_checkpoint
    from vggdet.evaluation import format_table
    from vggdet.fileio import write_json

    report_dir = os.path.join(out, "report") if analysis else None
    metrics = evaluate_checkpoint(checkpoint, config, overrides, results_dir=out, analysis_dir=report_dir)
    if metrics is not None:
        print(format_table(metrics))
        write_json(os.path.join(out, "metrics.json"), {**metrics, "checkpoint": checkpoint})
        print(f"results and metrics.json written to {out}")
    if report_dir is not None and metrics is not None:
        import json

        from vggdet.cli.analyze import format_summary

        with open(os.path.join(report_dir, "analysis.json")) as f:
            print(format_summary(json.load(f)))
        print(f"report written to {os.path.join(report_dir, 'report.html')}")
    return 0
