"""Process-0 logs of a training run: metrics.jsonl, TensorBoard scalars, PNG sample grids, and the
progress bar. A resumed run continues them from the restored step: records past it (written after
the checkpoint the run resumed from) are dropped, so no step is logged twice."""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np


class Writer:
    def __init__(self, workdir: str, start: int):
        self.active = jax.process_index() == 0
        self.workdir = workdir
        self.tb = None
        if self.active:
            os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
            _truncate_jsonl(os.path.join(workdir, "metrics.jsonl"), start)
            from tensorboardX import SummaryWriter
            # purge_step: TensorBoard drops the events at or after it from earlier attempts.
            self.tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start + 1 if start else None)

    def scalars(self, step: int, values: dict) -> None:
        if not self.active:
            return
        with open(os.path.join(self.workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def image(self, step: int, image: np.ndarray) -> None:
        if self.active:
            from PIL import Image
            Image.fromarray(np.asarray(image)).save(os.path.join(self.workdir, "samples", f"step_{step:07d}.png"))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _truncate_jsonl(path: str, start: int) -> None:
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= start]
    if len(keep) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)


class Progress:
    """tqdm bar on process 0 over the global steps: loss, images/s and ETA."""

    def __init__(self, start: int, end: int, batch: int, enabled: bool):
        from tqdm import tqdm
        self.batch = batch
        self.bar = tqdm(total=end, initial=start, unit="step", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True)
        self.start, self.t0, self.last = start, time.time(), start

    def update(self, step: int, metrics: dict) -> None:
        self.bar.update(step - self.last)
        self.last = step
        rate = (step - self.start) / max(time.time() - self.t0, 1e-9)
        self.bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}", img_s=f"{rate * self.batch:.1f}")

    def close(self) -> None:
        self.bar.close()
