"""Training feedback on the main process: text lines, `work_dir/log.jsonl` records and TensorBoard scalars.

Other ranks get a logger that does nothing, so callers never check the rank themselves.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from tqdm import tqdm

__all__ = ["RunLogger"]


class RunLogger:
    def __init__(self, work_dir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(work_dir, "log.jsonl")
        self.tb = None
        if enabled and tensorboard:
            try:  # tensorboard is optional
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(work_dir, "tb"))
            except Exception:
                self.tb = None

    def text(self, msg: str) -> None:
        """A line for the console that does not break the progress bar."""
        if self.enabled:
            tqdm.write(msg)

    def record(self, record: dict) -> None:
        """One JSON line in log.jsonl, with a UTC "time"; its numbers also go to TensorBoard as `<mode>/<key>`."""
        if not self.enabled:
            return
        record = {**record, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # wall clock
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("iter", "epoch"):
                    self.tb.add_scalar(f"{record.get('mode', 'train')}/{k}", v, record.get("iter", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
