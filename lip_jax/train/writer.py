"""Process-0 logs of a training run: metrics.jsonl, TensorBoard scalars, PNG sample grids, and the
progress bar. A resumed run continues them from the restored step: records past it (written after
the checkpoint the run resumed from) are dropped, so no step is logged twice."""

from __future__ import annotations

import io
import json
import sys
import time

import jax
import numpy as np

from lip_jax.images import write_image
from lip_jax.paths import PathLike, is_url, path


class Writer:
    def __init__(self, workdir: PathLike, start: int):
        self.active = jax.process_index() == 0
        self.workdir = path(workdir)
        self.metrics = self.workdir / "metrics.jsonl"
        self.tb = None
        if self.active:
            (self.workdir / "samples").mkdir(parents=True, exist_ok=True)
            self._lines = _truncate_jsonl(self.metrics, start)
            from tensorboardX import SummaryWriter
            _register_object_store_events()
            # purge_step: TensorBoard drops the events at or after it from earlier attempts.
            self.tb = SummaryWriter(str(self.workdir / "tb"), purge_step=start + 1 if start else None)

    def scalars(self, step: int, values: dict) -> None:
        if not self.active:
            return
        line = json.dumps({"step": step, **values}) + "\n"
        if is_url(self.metrics):
            # An object cannot be appended to: it is replaced whole, so a reader never sees half a line.
            self._lines.append(line)
            self.metrics.write_text("".join(self._lines))
        else:
            with self.metrics.open("a") as f:
                f.write(line)
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def image(self, step: int, image: np.ndarray) -> None:
        if self.active:
            write_image(np.asarray(image), self.workdir / "samples" / f"step_{step:07d}.png")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _truncate_jsonl(file, start: int) -> list[str]:
    """Drop the records past `start`; the kept lines."""
    if not file.exists():
        return []
    lines = file.read_text().splitlines(keepends=True)
    keep = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= start]
    if len(keep) != len(lines):
        if is_url(file):
            file.write_text("".join(keep))  # an object is replaced whole
        else:
            tmp = file.with_name(file.name + ".tmp")
            tmp.write_text("".join(keep))
            tmp.replace(file)
    return keep


class _ObjectEvents:
    """A TensorBoard event file in an object store: the records so far, rewritten whole at every
    flush (an object has no append; scalar logs stay small). tensorboardX's own gs:// writer goes
    through google-cloud-storage and s3:// through boto3; this one through epath like every other
    file of a run, with the same credentials."""

    def __init__(self, name: str):
        self.file = path(name)
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        self.file.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _ObjectEventsFactory:
    def open(self, name: str) -> _ObjectEvents:
        return _ObjectEvents(name)

    def directory_check(self, name: str) -> None:
        pass  # an object store has no directories to create


def _register_object_store_events() -> None:
    from tensorboardX import record_writer

    for scheme in ("gs", "s3", "az"):
        record_writer.register_writer_factory(scheme, _ObjectEventsFactory())


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
