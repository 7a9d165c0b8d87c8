"""Plot a training run: python tools/plot_log.py WORK_DIR [--out PNG]

Reads WORK_DIR/log.jsonl and draws the loss terms, the learning rate and mAP over iterations.
Also installed as `vggdet-plot-log`.
"""
from __future__ import annotations

import argparse
import json
import os

from vggdet.cli import command, prog
from vggdet.fileio import ensure_writable


def read_log(path: str) -> tuple[list, list]:
    train, evals = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{n}: not a JSON line") from None
            (evals if rec.get("mode") == "eval" else train).append(rec)
    return train, evals


def plot(train: list, evals: list, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    its = [r["iter"] for r in train]
    for key in sorted({k for r in train for k in r if k.startswith("loss")}):
        axes[0].plot(its, [r.get(key) for r in train], label=key)
    axes[0].set(title="losses", xlabel="iteration", yscale="log")
    axes[0].legend(fontsize=8)
    axes[1].plot(its, [r["lr"] for r in train])
    axes[1].set(title="learning rate", xlabel="iteration")
    axes[2].plot([r["iter"] for r in evals], [100 * r["mAP"] for r in evals], marker="o")
    axes[2].set(title="mAP (%)", xlabel="iteration")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


@command
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=prog("plot_log.py"), description=__doc__.splitlines()[0])
    p.add_argument("work_dir")
    p.add_argument("--out", help="PNG path (default WORK_DIR/log.png)")
    args = p.parse_args(argv)
    log = os.path.join(args.work_dir, "log.jsonl")
    if not os.path.isfile(log):
        raise FileNotFoundError(f"no training log at {log}")
    train, evals = read_log(log)
    out = args.out or os.path.join(args.work_dir, "log.png")
    ensure_writable(os.path.dirname(os.path.abspath(out)))
    plot(train, evals, out)
    print(f"wrote {out} ({len(train)} training records, {len(evals)} evaluations)")
    return 0
