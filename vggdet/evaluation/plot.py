"""Per-class precision-recall curves as PNG files (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import os
import re
from typing import Mapping


def plot_pr_curves(curves: Mapping, out_dir: str, metrics: Mapping) -> list:
    """One `pr_<class>.png` per class in `curves` ({name: {"recall", "precision"}}); return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, c in curves.items():
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.plot(c["recall"], c["precision"], lw=1.5)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
               title=f"{name}: AP {100 * metrics['per_class'][name]:.2f} ({metrics['metric']})")
        ax.grid(alpha=0.3)
        path = os.path.join(out_dir, f"pr_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png")
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
