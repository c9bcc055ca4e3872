#!/usr/bin/env python
"""Fault drill: provoke the faults a long run meets (kills, signals, corrupted checkpoints, a full or
read-only disk, a second trainer, hostile weight files, a killed evaluation, an absurd learning
rate, integer arguments out of range, signals during start-up) against the tiny
configs, through the `lip-jax` command line, and check what the README's "Reliability" section
promises: the work resumes to the same bits, or the command refuses in one line with the documented
exit code. Prints a Markdown table (fault, runs, outcome, data lost) and one JSON line; exits 1 if
any expectation failed.

    python tools/fault_drill.py [--runs 1] [--only 1,4,10] [--workdir /tmp/drill] [--keep] [--seed 0]

Training faults use configs/test_stage2.py (24 steps, a checkpoint every 4, a random DF-VQGAN the
drill writes), evaluation faults configs/lip_maskcoco.py:tiny (random {mps, vqgan} weights, a
generated 40-image set). Every command runs in a subprocess with a timeout; compiled programs are
shared between them through LIP_JAX_CACHE_DIR in the scratch directory. Faults 6 and 7 mount a
tmpfs (root only; otherwise reported as not run).
"""

import argparse
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE2 = os.path.join(REPO, "configs", "test_stage2.py")
EVAL_CONFIG = os.path.join(REPO, "configs", "lip_maskcoco.py") + ":tiny"
LIP = [sys.executable, "-m", "lip_jax.cli"]
TOTAL_STEPS, SAVE_EVERY = 24, 4
EVAL_EXAMPLES = 40
TRAIN_TIMEOUT, EVAL_TIMEOUT, SHORT_TIMEOUT = 600, 600, 180


# --- processes --------------------------------------------------------------------------------------

class Run:
    """A `lip-jax` subprocess: output to files (no pipe to fill), its own process group."""

    def __init__(self, drill: "Drill", name: str, argv: list[str]):
        self.name, self.argv = name, argv
        self.log = os.path.join(drill.logs, name)
        self.t0 = time.monotonic()
        with open(self.log + ".out", "wb") as out, open(self.log + ".err", "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=drill.env, cwd=drill.scratch,
                                         start_new_session=True)
        self.rc = None
        self.wall = None

    def poll(self):
        return self.proc.poll()

    def wait(self, timeout: float) -> int:
        try:
            self.rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.rc = "timeout"
        self.wall = time.monotonic() - self.t0
        return self.rc

    def signal(self, signum: int) -> None:
        if signum == signal.SIGKILL:  # the process and anything it started, as `kill -9` of a job
            os.killpg(self.proc.pid, signum)
        else:  # one signal to the trainer, as `kill PID` or a scheduler's SIGTERM
            self.proc.send_signal(signum)

    @property
    def err(self) -> str:
        return open(self.log + ".err", encoding="utf-8", errors="replace").read()

    @property
    def out(self) -> str:
        return open(self.log + ".out", encoding="utf-8", errors="replace").read()

    def lines(self) -> list[str]:
        return [ln.strip() for ln in re.split(r"[\r\n]", self.out + "\n" + self.err) if ln.strip()]

    def errors(self) -> list[str]:
        return [ln for ln in self.lines() if ln.startswith("lip-jax: error:")]

    def messages(self) -> list[str]:
        """The command's own lines (`lip-jax: ...`; not the eval progress notes `lip-jax eval:`)."""
        return [ln for ln in self.lines() if ln.startswith("lip-jax: ")]

    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.out + self.err


def wait_for(predicate, run: Run, timeout: float) -> bool:
    """Poll until predicate() or the run exits; True if the predicate held while it ran."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if run.poll() is not None:
            return predicate()
        time.sleep(0.05)
    return False


def checkpoint_steps(workdir: str) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def pngs(out: str) -> list[str]:
    d = os.path.join(out, "eval_visu")
    return sorted(f for f in os.listdir(d) if f.endswith(".png") and not f.startswith(".")) if os.path.isdir(d) else []


# --- data and weights -------------------------------------------------------------------------------

def flip_a_byte(directory: str) -> str:
    """Flip one bit in the middle of the largest array-data file of an orbax tree."""
    files = [f for f in glob.glob(os.path.join(directory, "**", "*"), recursive=True)
             if os.path.isfile(f) and "/d/" in f]
    target = max(files, key=os.path.getsize)
    data = bytearray(open(target, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(target, "wb").write(bytes(data))
    return target


def random_params(template, seed: int):
    """Random weights from a template's shapes (no model.init to compile)."""
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)

    def leaf(path, t):
        name, shape = path[-1].key, t.shape
        if name == "kernel":
            return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
        if name == "scale" and len(shape) == 1:
            return (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        if name == "bias":
            return (0.05 * rng.standard_normal(shape)).astype(np.float32)
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, template)


def write_eval_set(d: str, n: int, size: int = 32) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("gt", "mask", "mask_img", "guidance"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        m = np.zeros((size, size), np.uint8)
        m[2 + i % 6:18 + i % 5, 4:12 + 2 * (i % 8)] = 255
        Image.fromarray(img).save(os.path.join(d, "gt", f"{i:04d}.png"))
        Image.fromarray(m).save(os.path.join(d, "mask", f"{i:04d}.mask.png"))
        Image.fromarray(np.where(m[..., None] > 0, 0, img).astype(np.uint8)).save(
            os.path.join(d, "mask_img", f"{i:04d}.png"))
        with open(os.path.join(d, "guidance", f"{i:04d}.txt"), "w") as f:
            f.write(f"a {['red', 'green', 'blue'][i % 3]} circle\n")


def same_params(a: str, b: str) -> Tuple[bool, str]:
    """Bit-exact comparison of two orbax parameter trees (each verified against its checksums)."""
    import jax
    import numpy as np
    from lip_jax.weights.store import load_params

    try:
        fa = dict((jax.tree_util.keystr(k), np.asarray(v)) for k, v in jax.tree_util.tree_flatten_with_path(load_params(a))[0])
        fb = dict((jax.tree_util.keystr(k), np.asarray(v)) for k, v in jax.tree_util.tree_flatten_with_path(load_params(b))[0])
    except Exception as e:  # noqa: BLE001 - any failure to read is a finding
        return False, f"cannot load: {' '.join(str(e).split())[:200]}"
    if fa.keys() != fb.keys():
        return False, f"different keys ({len(fa.keys() ^ fb.keys())})"
    diff = [k for k in fa if fa[k].dtype != fb[k].dtype or fa[k].shape != fb[k].shape
            or fa[k].tobytes() != fb[k].tobytes()]
    return (not diff), (f"{len(diff)} of {len(fa)} arrays differ, e.g. {diff[0]}" if diff else f"{len(fa)} arrays equal")


# Hostile files -------------------------------------------------------------------------------------

class _Call:
    """Pickles as a call of `fn(*args)`: what unpickling it would run."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


try:  # the torch extra: only the hostile-file fault needs it
    import torch
except ImportError:  # pragma: no cover
    torch = None

if torch is not None:
    class EvilState(torch.nn.Module):
        """Its TorchScript __setstate__ (run by torch.jit.load) creates the file named in its state."""

        def __init__(self, marker: str):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(2))
            self.marker = marker

        def forward(self, x):
            return x + self.weight

        @torch.jit.export
        def __getstate__(self) -> Tuple[torch.Tensor, str, bool]:
            return (self.weight, self.marker, self.training)

        @torch.jit.export
        def __setstate__(self, state: Tuple[torch.Tensor, str, bool]) -> None:
            self.marker = state[1]
            self.training = state[2]
            created = torch.from_file(state[1], True, 4)  # shared=True: creates the file
            self.weight = state[0] + created[:2] * 0


def write_hostile(d: str, marker: str) -> dict:
    """{kind: path} of a pickle .pth whose __reduce__ runs `touch MARKER` and a TorchScript archive
    whose __setstate__ creates MARKER, each marker a file of its own under `marker`."""
    import warnings

    os.makedirs(d, exist_ok=True)
    pickle_path = os.path.join(d, "evil_reduce.pth")
    torch.save(_Call(os.system, f"touch {marker}.pickle"), pickle_path)
    ts_path = os.path.join(d, "evil_setstate.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(EvilState(f"{marker}.torchscript")).save(ts_path)
    return {"pickle": pickle_path, "torchscript": ts_path}


def payload_is_live(d: str) -> bool:
    """Control: the same constructions do run their code under torch.load / torch.jit.load."""
    import warnings

    marker = os.path.join(d, "control")
    files = write_hostile(os.path.join(d, "control_files"), marker)
    try:
        torch.load(files["pickle"], weights_only=False)
    except Exception:  # noqa: BLE001 - os.system returns an int, torch.load may complain after it ran
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(files["torchscript"])
    return os.path.exists(marker + ".pickle") and os.path.exists(marker + ".torchscript")


# --- the drill --------------------------------------------------------------------------------------

class Drill:
    def __init__(self, args):
        self.args = args
        self.scratch = args.workdir
        self.logs = os.path.join(self.scratch, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.env = dict(os.environ, LIP_JAX_CACHE_DIR=args.cache_dir or os.path.join(self.scratch, "xla-cache"))
        self.env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        self.rng = random.Random(args.seed)
        self.rows: list[dict] = []
        self.mounts: list[str] = []
        self.vq = os.path.join(self.scratch, "dfvqgan")
        self.ref = os.path.join(self.scratch, "train_ref")
        self.window = None  # seconds from the first checkpoint to the end of a training run
        self.n = 0

    def path(self, *p) -> str:
        return os.path.join(self.scratch, *p)

    def run(self, name: str, argv: list[str], timeout: float) -> Run:
        r = Run(self, name, argv)
        r.wait(timeout)
        return r

    def train_argv(self, workdir: str, *extra: str) -> list[str]:
        return LIP + ["train", "--config", STAGE2, "--workdir", workdir, f"--config.vqgan_ckpt={self.vq}",
                      f"--config.train.total_steps={TOTAL_STEPS}", f"--config.train.save_every={SAVE_EVERY}",
                      "--config.train.keep=2", f"--config.train.log_every={SAVE_EVERY}", *extra]

    def row(self, fault: str, runs: int, outcome: str, lost, notes: list[str] | None = None) -> None:
        self.rows.append(dict(fault=fault, runs=runs, outcome=outcome, data_lost=lost, notes=notes or []))
        shown = {True: "yes", False: "no", None: "n/a"}[lost]
        print(f"[{time.monotonic() - T0:6.0f} s] {fault}: {outcome} (data lost: {shown})", file=sys.stderr, flush=True)

    # setup ----------------------------------------------------------------------------------------
    def setup_train(self) -> None:
        if os.path.isdir(self.ref):
            return
        import flax.linen as nn
        import jax
        from lip_jax.config import load_config
        from lip_jax.models import dfvqgan
        from lip_jax.weights.store import save_params

        cfg = load_config(STAGE2)
        save_params(self.vq, nn.unbox(dfvqgan.init_params(dfvqgan.from_config(cfg.vqgan), jax.random.key(7))))
        r = Run(self, "train_ref", self.train_argv(self.ref))
        wait_for(lambda: checkpoint_steps(self.ref), r, TRAIN_TIMEOUT)
        t_first = time.monotonic()
        r.wait(TRAIN_TIMEOUT)
        if r.rc != 0 or not os.path.isdir(os.path.join(self.ref, "params")):
            raise SystemExit(f"fault_drill: the uninterrupted reference run failed (exit {r.rc}); see {r.log}.err")
        self.window = time.monotonic() - t_first
        print(f"reference training run: {r.wall:.0f} s, {self.window:.1f} s after its first checkpoint",
              file=sys.stderr, flush=True)

    def setup_eval(self) -> None:
        if os.path.isdir(self.path("eval_ref")):
            return
        from lip_jax.config import load_config
        from lip_jax.weights import mps2s as CM
        from lip_jax.weights.store import load_params, save_params

        self.setup_train()  # its DF-VQGAN: the tiny eval config uses the same `reduced` preset
        cfg = load_config(EVAL_CONFIG)
        save_params(self.path("lip_tiny"), {"mps": random_params(CM.param_template(cfg.mps), 2),
                                            "vqgan": load_params(self.vq)})
        write_eval_set(self.path("eval_data"), EVAL_EXAMPLES)
        out = self.path("eval_ref")
        r = Run(self, "eval_ref", self.eval_argv(out))
        wait_for(lambda: pngs(out), r, EVAL_TIMEOUT)
        t_first = time.monotonic()
        wait_for(lambda: len(pngs(out)) >= 2 * EVAL_EXAMPLES, r, EVAL_TIMEOUT)  # best_n 2
        self.eval_window = time.monotonic() - t_first  # the kills land while images are being written
        r.wait(EVAL_TIMEOUT)
        if r.rc != 0:
            raise SystemExit(f"fault_drill: the uninterrupted evaluation failed (exit {r.rc}); see {r.log}.err")
        print(f"reference evaluation: {r.wall:.0f} s, its images written in {self.eval_window:.1f} s",
              file=sys.stderr, flush=True)

    def eval_argv(self, out: str) -> list[str]:
        return LIP + ["eval", "--config", EVAL_CONFIG, "--ckpt", self.path("lip_tiny"), "--data",
                      self.path("eval_data"), "--out", out, "--config.eval.batch_size=2", "--no-progress"]

    def image_and_mask(self) -> Tuple[str, str]:
        import numpy as np
        from PIL import Image

        img, mask = self.path("photo.png"), self.path("hole.png")
        if not os.path.exists(img):
            Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(img)
            m = np.zeros((32, 32), np.uint8)
            m[8:24, 8:24] = 255
            Image.fromarray(m).save(mask)
        return img, mask

    def inpaint_argv(self, ckpt: str, out: str, *extra: str) -> list[str]:
        img, mask = self.image_and_mask()
        return LIP + ["inpaint", "--config", STAGE2, "--ckpt", ckpt, "--image", img, "--mask", mask,
                      "--text", "a red circle", "--out", out, *extra]

    def mount(self, d: str, options: str) -> bool:
        os.makedirs(d, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", d], capture_output=True, timeout=30)
        if r.returncode == 0:
            self.mounts.append(d)
        return r.returncode == 0

    def unmount_all(self) -> None:
        while self.mounts:
            d = self.mounts.pop()
            subprocess.run(["umount", d], capture_output=True, timeout=30)

    # 1-3 ------------------------------------------------------------------------------------------
    def signal_train(self, label: str, signum: int) -> None:
        self.setup_train()
        outcomes, failed, notes = [], False, []
        for i in range(self.args.runs):
            wd = self.path(f"train_{signal.Signals(signum).name.lower()}_{i}")
            r = Run(self, os.path.basename(wd), self.train_argv(wd))
            if not wait_for(lambda: checkpoint_steps(wd), r, TRAIN_TIMEOUT):
                r.wait(TRAIN_TIMEOUT)
                outcomes.append(f"no checkpoint before exit {r.rc}")
                failed = True
                continue
            delay = self.rng.uniform(0, 0.7 * self.window)
            end = time.monotonic() + delay
            while time.monotonic() < end and r.poll() is None:
                time.sleep(0.02)
            sent = r.poll() is None
            step_at = checkpoint_steps(wd)
            if sent:
                r.signal(signum)
            r.wait(TRAIN_TIMEOUT)
            bits = [f"{'sent' if sent else 'finished before the signal'} {delay:.1f} s after step "
                    f"{step_at[0] if step_at else '?'}'s checkpoint"]
            ok = True
            if sent and signum == signal.SIGKILL:
                ok &= r.rc == -signal.SIGKILL
                bits.append(f"killed (rc {r.rc})")
            elif sent:
                msgs = r.messages()
                one = (len(msgs) == 1 and f"interrupted by {signal.Signals(signum).name}" in msgs[0]
                       and not r.traceback())
                ok &= r.rc == 75 and one
                bits.append(f"exit {r.rc}" + ("" if one else f", {len(msgs)} lip-jax lines"
                                               + (", traceback" if r.traceback() else "")))
                if msgs:
                    notes.append(msgs[0])
            else:
                ok &= r.rc == 0
            again = self.run(os.path.basename(wd) + "_rerun", self.train_argv(wd), TRAIN_TIMEOUT)
            resumed = re.search(r"resumed from step (\d+)", again.err)
            equal, why = same_params(os.path.join(wd, "params"), os.path.join(self.ref, "params"))
            ok &= again.rc == 0 and equal
            bits.append(f"rerun exit {again.rc}, " + (f"resumed from step {resumed.group(1)}" if resumed else "fresh start")
                        + (", params equal" if equal else f", params NOT equal ({why})"))
            if not ok:
                failed = True
            outcomes.append("; ".join(bits))
        summary = self.summarise(outcomes, failed, signum)
        self.row(label, self.args.runs, summary, failed, outcomes + notes)

    def summarise(self, outcomes, failed, signum) -> str:
        kill = signum == signal.SIGKILL
        if failed:
            return "FAILED: " + " | ".join(outcomes)
        resumed = [re.search(r"resumed from step (\d+)", o) for o in outcomes]
        steps = ", ".join(m.group(1) for m in resumed if m)
        early = sum("finished before the signal" in o for o in outcomes)
        head = "killed" if kill else "exit 75, one line"
        return (f"{head}; rerun resumed (from step {steps or '-'}), completed; params bit-equal to the reference"
                + (f" ({early} run(s) finished before the signal)" if early else ""))

    # 4 --------------------------------------------------------------------------------------------
    def corrupt_checkpoint(self) -> None:
        self.setup_train()
        wd = self.path("train_flipped_ckpt")
        shutil.copytree(self.ref, wd)
        shutil.rmtree(os.path.join(wd, "params"))  # as a run that stopped after its last checkpoint
        newest, older = checkpoint_steps(wd)[-1], checkpoint_steps(wd)[-2]
        flip_a_byte(os.path.join(wd, "checkpoints", str(newest), "state"))
        r = self.run("train_flipped_ckpt", self.train_argv(wd), TRAIN_TIMEOUT)
        warned = f"checkpoint step {newest} does not verify" in r.err
        resumed = re.search(r"resumed from step (\d+)", r.err)
        equal, why = same_params(os.path.join(wd, "params"), os.path.join(self.ref, "params"))
        ok = r.rc == 0 and warned and resumed and int(resumed.group(1)) == older and equal
        outcome = (f"warned step {newest} does not verify, resumed from step {resumed.group(1) if resumed else '?'}, "
                   f"exit {r.rc}, params " + ("bit-equal" if equal else f"NOT equal ({why})"))
        if not warned:
            outcome = f"no verification warning; exit {r.rc}; " + outcome
        note = next((ln for ln in r.lines() if "does not verify" in ln), "")
        self.row("4. flipped byte in the newest training checkpoint, resume", 1,
                 outcome if ok else "FAILED: " + outcome, not ok, [note[:300]])

    # 5 --------------------------------------------------------------------------------------------
    def corrupt_params(self) -> None:
        self.setup_train()
        wd = self.path("train_flipped_params")
        shutil.copytree(self.ref, wd)
        flip_a_byte(os.path.join(wd, "params"))
        self.setup_eval_data_only()
        checks = {
            "convert": (LIP + ["convert", "--config", STAGE2, "--from", wd, "--to", self.path("flipped.pth")],
                        self.path("flipped.pth")),
            "inpaint": (self.inpaint_argv(wd, self.path("flipped_inpaint.png")), self.path("flipped_inpaint.png")),
            "eval": (LIP + ["eval", "--config", STAGE2, "--ckpt", wd, "--data", self.path("eval_data"), "--out",
                            self.path("flipped_eval"), "--no-progress"], self.path("flipped_eval", "metrics.json")),
        }
        bits, ok, notes = [], True, []
        for name, (argv, output) in checks.items():
            r = self.run(f"flipped_params_{name}", argv, SHORT_TIMEOUT)
            errs = r.errors()
            good = (r.rc == 2 and len(errs) == 1 and "fails its checksum" in errs[0] and not r.traceback()
                    and not os.path.exists(output))
            ok &= good
            bits.append(f"{name} exit {r.rc}" + ("" if good else f" ({len(errs)} error lines, output "
                                                 f"{'written' if os.path.exists(output) else 'absent'})"))
            notes.append(errs[0] if errs else r.err[-300:])
        outcome = "refused in one line naming the array: " + ", ".join(bits)
        self.row("5. flipped byte in WORKDIR/params, then convert / inpaint / eval", 1,
                 outcome if ok else "FAILED: " + outcome, not ok, notes)

    def setup_eval_data_only(self) -> None:
        if not os.path.isdir(self.path("eval_data")):
            write_eval_set(self.path("eval_data"), EVAL_EXAMPLES)

    # 6 --------------------------------------------------------------------------------------------
    def disk_full(self) -> None:
        self.setup_train()
        d = self.path("full")
        label = "6. disk full while training (3 MiB tmpfs, a checkpoint every step)"
        if not self.mount(d, "size=3m"):
            self.row(label, 0, "not run: needs root to mount a tmpfs", None)
            return
        try:
            wd = os.path.join(d, "run")
            extra = ("--config.train.save_every=1",)
            r = self.run("train_disk_full", self.train_argv(wd, *extra), TRAIN_TIMEOUT)
            errs = r.errors()
            m = re.search(r"last complete checkpoint is step (\d+)", errs[0]) if errs else None
            bits = [f"exit {r.rc}", f"{len(errs)} error line(s)", "traceback" if r.traceback() else "no traceback"]
            ok = r.rc == 74 and len(errs) == 1 and not r.traceback() and m is not None
            notes = [errs[0] if errs else r.err[-300:]]
            notes += [ln for ln in r.messages() if ln.startswith("lip-jax: note:")]
            # The last complete checkpoint: a rerun on a copy in a roomy directory resumes from it.
            roomy = self.path("train_disk_full_copy")
            shutil.copytree(wd, roomy, symlinks=True)
        finally:
            self.unmount_all()
        if m is None:
            self.row(label, 1, "FAILED: " + ", ".join(bits) + "; no last complete checkpoint named", True, notes)
            return
        # (the default checkpoint interval: 24 one-step saves would only cost time; the steps are the same)
        again = self.run("train_disk_full_rerun", self.train_argv(roomy), TRAIN_TIMEOUT)
        resumed = re.search(r"resumed from step (\d+)", again.err)
        unverified = "does not verify" in again.err
        equal, why = same_params(os.path.join(roomy, "params"), os.path.join(self.ref, "params"))
        ok &= (again.rc == 0 and resumed is not None and resumed.group(1) == m.group(1) and not unverified and equal)
        bits.append(f"step {m.group(1)} named intact; a copy resumed from step "
                    f"{resumed.group(1) if resumed else '?'}" + (" (after a verification warning)" if unverified else "")
                    + f", completed (exit {again.rc}), params " + ("bit-equal" if equal else f"NOT equal ({why})"))
        outcome = ", ".join(bits)
        self.row(label, 1, outcome if ok else "FAILED: " + outcome, not ok, notes)

    # 7 --------------------------------------------------------------------------------------------
    def read_only(self) -> None:
        self.setup_train()
        d = self.path("readonly")
        label = "7. read-only destination (read-only tmpfs) for convert --to and train --workdir"
        if not self.mount(d, "ro,size=1m"):
            self.row(label, 0, "not run: needs root to mount a tmpfs", None)
            return
        bits, ok, notes = [], True, []
        try:
            for name, argv in (("convert", LIP + ["convert", "--config", STAGE2, "--from", self.ref, "--to",
                                                   os.path.join(d, "x.pth")]),
                               ("train", self.train_argv(os.path.join(d, "run")))):
                r = self.run(f"readonly_{name}", argv, SHORT_TIMEOUT)
                errs = r.errors()
                good = r.rc == 2 and len(errs) == 1 and not r.traceback() and r.wall < 10
                ok &= good
                bits.append(f"{name} exit {r.rc} in {r.wall:.1f} s" + ("" if len(errs) == 1 else f" ({len(errs)} error lines)"))
                notes.append(errs[0] if errs else r.err[-300:])
        finally:
            self.unmount_all()
        outcome = ", ".join(bits) + ", one line each"
        self.row(label, 1, outcome if ok else "FAILED: " + outcome, not ok, notes)

    # 8 --------------------------------------------------------------------------------------------
    def two_trainers(self) -> None:
        self.setup_train()
        wd = self.path("train_two")
        first = Run(self, "train_two_first", self.train_argv(wd))
        wait_for(lambda: os.path.exists(os.path.join(wd, ".lock")), first, TRAIN_TIMEOUT)
        second = self.run("train_two_second", self.train_argv(wd), SHORT_TIMEOUT)
        first_running = first.poll() is None
        first.wait(TRAIN_TIMEOUT)
        errs = second.errors()
        refused = second.rc == 2 and len(errs) == 1 and "in use by another trainer" in errs[0] and not second.traceback()
        equal, why = same_params(os.path.join(wd, "params"), os.path.join(self.ref, "params"))
        ok = refused and first_running and first.rc == 0 and equal
        outcome = (f"second exit {second.rc} \"in use by another trainer\"" if refused else
                   f"second exit {second.rc}, {len(errs)} error line(s)")
        outcome += (f"; first finished (exit {first.rc}), params " + ("bit-equal" if equal else f"NOT equal ({why})"))
        if not first_running:
            outcome += " (the first had already exited when the second did)"
        self.row("8. two trainers on one workdir", 1, outcome if ok else "FAILED: " + outcome, not ok,
                 [errs[0] if errs else second.err[-300:]])

    # 9 --------------------------------------------------------------------------------------------
    def hostile(self) -> None:
        self.setup_train()
        d = self.path("hostile")
        marker = os.path.join(d, "RAN")
        files = write_hostile(d, marker)
        live = payload_is_live(self.path("hostile_control"))
        bits, ok, notes = [], True, []
        for kind, path in files.items():
            for name, argv in (("convert", LIP + ["convert", "--from", path, "--to", self.path(f"hostile_{kind}_out")]),
                               ("inpaint --clip", self.inpaint_argv(self.ref, self.path(f"hostile_{kind}.png"),
                                                                    "--clip", path, "--clip-config", "tiny"))):
                r = self.run(f"hostile_{kind}_{name.split()[0]}", argv, SHORT_TIMEOUT)
                errs = r.errors()
                ran = glob.glob(marker + "*")
                good = (r.rc == 2 and len(errs) == 1 and os.path.basename(path) in errs[0] and not r.traceback()
                        and not ran)
                ok &= good
                bits.append(f"{kind} -> {name}: exit {r.rc}" + ("" if good else f" ({len(errs)} error lines, "
                                                                            f"marker {'CREATED' if ran else 'absent'})"))
                notes.append(errs[0] if errs else r.err[-300:])
        outcome = ("exit 2, one line, no marker for " + "; ".join(b.split(":")[0] for b in bits) if ok
                   else "FAILED: " + "; ".join(bits))
        outcome += f" (control: the payloads {'do' if live else 'do NOT'} run under torch.load / torch.jit.load)"
        self.row("9. hostile files: pickle __reduce__ .pth and TorchScript __setstate__", 1, outcome, not ok, notes)

    # 10 -------------------------------------------------------------------------------------------
    def kill_eval(self) -> None:
        import numpy as np
        from PIL import Image

        self.setup_eval()
        ref = self.path("eval_ref")
        ref_metrics = json.load(open(os.path.join(ref, "metrics.json")))
        outcomes, failed = [], False
        for i in range(self.args.runs):
            out = self.path(f"eval_kill_{i}")
            r = Run(self, f"eval_kill_{i}", self.eval_argv(out))
            wait_for(lambda: pngs(out), r, EVAL_TIMEOUT)
            delay = self.rng.uniform(0, self.eval_window)
            end = time.monotonic() + delay
            while time.monotonic() < end and r.poll() is None:
                time.sleep(0.02)
            sent = r.poll() is None
            written = len(pngs(out))
            if sent:
                r.signal(signal.SIGKILL)
            r.wait(EVAL_TIMEOUT)
            tmp_left = [f for f in os.listdir(os.path.join(out, "eval_visu")) if f.startswith(".")] \
                if os.path.isdir(os.path.join(out, "eval_visu")) else []
            again = self.run(f"eval_kill_{i}_rerun", self.eval_argv(out), EVAL_TIMEOUT)
            resumed = re.search(r"resuming: (\d+) of (\d+)", again.err)
            names, want = pngs(out), pngs(ref)
            diff = [f for f in want if f not in names
                    or not np.array_equal(np.asarray(Image.open(os.path.join(out, "eval_visu", f))),
                                          np.asarray(Image.open(os.path.join(ref, "eval_visu", f))))]
            try:
                got = json.load(open(os.path.join(out, "metrics.json")))
            except (OSError, ValueError):
                got = {}
            counts = lambda m: {k: v for k, v in m.get("counts", {}).items() if k != "sampled_this_run"}  # noqa: E731
            same_metrics = got.get("metrics") == ref_metrics["metrics"] and counts(got) == counts(ref_metrics)
            ok = again.rc == 0 and names == want and not diff and same_metrics
            if sent:
                ok &= r.rc == -signal.SIGKILL
            bits = [f"{'killed' if sent else 'finished before the kill'} {delay:.1f} s after the first image "
                    f"({written} of {len(want)} images written)"]
            if tmp_left:
                bits.append(f"{len(tmp_left)} temporary file(s) left by the kill")
            bits.append(f"rerun exit {again.rc}" + (f", resumed with {resumed.group(1)} of {resumed.group(2)} examples"
                                                    if resumed else ", started over"))
            bits.append(("all %d PNGs equal" % len(want)) if names == want and not diff
                        else f"{len(diff) + len(set(names) ^ set(want))} PNGs differ or missing")
            bits.append("metrics.json equal" if same_metrics else "metrics.json DIFFERS")
            failed |= not ok
            outcomes.append(", ".join(bits))
        if failed:
            outcome = "FAILED: " + " | ".join(outcomes)
        else:
            res = [re.search(r"resumed with (\d+)", o) for o in outcomes]
            outcome = ("killed; rerun resumed (" + ", ".join(f"{m.group(1)}/{EVAL_EXAMPLES}" if m else "0"
                                                              for m in res)
                       + " examples kept), completed; every PNG and metrics.json equal the uninterrupted eval's")
            if any("finished before" in o for o in outcomes):
                outcome += " (some runs finished before the kill)"
            if any("temporary" in o for o in outcomes):
                outcome += "; temporary files left beside the PNGs"
        self.row("10. SIGKILL during eval, rerun", self.args.runs, outcome, failed, outcomes)


    # 11 -------------------------------------------------------------------------------------------
    def absurd_rate(self) -> None:
        import numpy as np
        import orbax.checkpoint as ocp

        self.setup_train()
        wd = self.path("train_absurd_lr")
        r = self.run("train_absurd_lr", self.train_argv(wd, "--config.train.lr=1e30", "--config.train.warmup_fraction=0",
                                                      "--config.train.save_every=1", "--config.train.max_skipped_steps=3"),
                     TRAIN_TIMEOUT)
        errs, steps = r.errors(), checkpoint_steps(wd)
        big = 0.0
        with ocp.StandardCheckpointer() as ckpt:
            for step in steps:
                state = ckpt.restore(os.path.join(wd, "checkpoints", str(step), "state"))
                big = max([big] + [float(np.abs(np.asarray(x)).max()) for x in jax_leaves(state["params"])])
        ok = (r.rc == 3 and len(errs) == 1 and "training diverged" in errs[0] and not r.traceback()
              and big < 1e3 and not os.path.isdir(os.path.join(wd, "params")))
        outcome = (f"exit {r.rc}, {len(errs)} error line(s); {len(steps)} checkpoint(s), largest |w| {big:.3g}; "
                   f"params/ {'written' if os.path.isdir(os.path.join(wd, 'params')) else 'absent'}")
        self.row("11. absurd learning rate (1e30): finite blow-up", 1, outcome if ok else "FAILED: " + outcome,
                 not ok, [errs[0] if errs else r.err[-300:]])

    # 12 -------------------------------------------------------------------------------------------
    def integers(self) -> None:
        self.setup_train()
        img, mask = self.image_and_mask()
        wd = self.path("train_bad_int")
        cases = {
            "inpaint --seed 2**64": (self.inpaint_argv(self.ref, self.path("int.png"), "--seed", str(2**64)), "--seed"),
            "inpaint --top-k 2**31": (self.inpaint_argv(self.ref, self.path("int.png"), "--top-k", str(2**31)), "--top-k"),
            "inpaint --num-samples 10**9": (self.inpaint_argv(self.ref, self.path("int.png"), "--num-samples",
                                                              str(10**9)), "--num-samples"),
            "train seed 2**63": (self.train_argv(wd, f"--config.seed={2**63}"), "config.seed"),
            "train data.seed 2**32": (self.train_argv(wd, f"--config.data.seed={2**32}"), "config.data.seed"),
            "train data.workers 10**6": (self.train_argv(wd, "--config.data.workers=1000000"), "config.data.workers"),
            "train data.batch_size 10**9": (self.train_argv(wd, "--config.data.batch_size=1000000000"),
                                            "config.data.batch_size"),
            "train total_steps 2**31": (self.train_argv(wd, f"--config.train.total_steps={2**31}"),
                                        "config.train.total_steps"),
            "train mps.dim 10**9": (self.train_argv(wd, "--config.mps.dim=1000000000"), "config.mps.dim"),
            "reconstruct vqgan.resolution 10**6": (LIP + ["reconstruct", "--config", STAGE2, "--ckpt", self.vq, "--image",
                                                          img, "--mask", mask, "--out", self.path("int.png"),
                                                          "--config.vqgan.resolution=1000000"], "config.vqgan.resolution"),
            "demo --images 10**12": (LIP + ["demo", "--workdir", self.path("int_demo"), "--images", str(10**12)],
                                     "--images"),
        }
        bits, ok, notes = [], True, []
        for name, (argv, arg) in cases.items():
            r = self.run("int_" + re.sub(r"\W+", "_", name), argv, SHORT_TIMEOUT)
            errs = r.errors()
            good = (r.rc == 2 and len(errs) == 1 and arg in errs[0] and "out of range [" in errs[0]
                    and not r.traceback() and r.wall < 20)
            ok &= good
            bits.append(f"{name}: exit {r.rc} in {r.wall:.1f} s" + ("" if good else f" ({len(errs)} error lines)"))
            notes.append(errs[0] if errs else r.err[-300:])
        ok &= not any(os.path.exists(p) for p in (wd, self.path("int.png"), self.path("int_demo")))
        outcome = "; ".join(bits) + ("; nothing written" if ok else "")
        self.row("12. integer arguments out of range (CLI flags, config fields)", 1,
                 ("exit 2, one line naming the argument and its range: " if ok else "FAILED: ") + outcome, not ok, notes)

    # 13 -------------------------------------------------------------------------------------------
    def signal_at_start_up(self) -> None:
        self.setup_train()
        bits, ok, notes = [], True, []
        for signum in (signal.SIGTERM, signal.SIGINT):
            wd = self.path(f"train_start_{signal.Signals(signum).name.lower()}")
            r = Run(self, os.path.basename(wd), self.train_argv(wd))
            wait_for(lambda: os.path.exists(os.path.join(wd, ".lock")), r, TRAIN_TIMEOUT)
            time.sleep(self.rng.uniform(0, 2))  # into initialisation and the first step's compilation
            t0, sent = time.monotonic(), r.poll() is None
            r.signal(signum)
            r.wait(SHORT_TIMEOUT)
            took, msgs = time.monotonic() - t0, r.messages()
            good = (sent and r.rc == 75 and took < 5 and len(msgs) == 1 and "during start-up" in msgs[0]
                    and not r.traceback() and not os.path.exists(os.path.join(wd, ".lock")))
            ok &= good
            bits.append(f"{signal.Signals(signum).name}: exit {r.rc} {took:.1f} s after the signal"
                        + ("" if good else f" ({len(msgs)} lip-jax lines, lock "
                                           f"{'left' if os.path.exists(os.path.join(wd, '.lock')) else 'released'})"))
            notes.append(msgs[0] if msgs else r.err[-300:])
        self.row("13. SIGTERM / SIGINT during training start-up (before the first step)", 1,
                 ("one line, lock released: " if ok else "FAILED: ") + ", ".join(bits), not ok, notes)


def jax_leaves(tree) -> list:
    import jax

    return jax.tree_util.tree_leaves(tree)


FAULTS = {
    1: ("1. SIGKILL during train (after the first checkpoint), rerun", lambda d: d.signal_train(
        "1. SIGKILL during train (after the first checkpoint), rerun", signal.SIGKILL)),
    2: ("2. SIGTERM during train, rerun", lambda d: d.signal_train("2. SIGTERM during train, rerun", signal.SIGTERM)),
    3: ("3. SIGINT (Ctrl-C) during train, rerun", lambda d: d.signal_train("3. SIGINT (Ctrl-C) during train, rerun",
                                                                          signal.SIGINT)),
    4: ("4", lambda d: d.corrupt_checkpoint()),
    5: ("5", lambda d: d.corrupt_params()),
    6: ("6", lambda d: d.disk_full()),
    7: ("7", lambda d: d.read_only()),
    8: ("8", lambda d: d.two_trainers()),
    9: ("9", lambda d: d.hostile()),
    10: ("10", lambda d: d.kill_eval()),
    11: ("11", lambda d: d.absurd_rate()),
    12: ("12", lambda d: d.integers()),
    13: ("13", lambda d: d.signal_at_start_up()),
}


def main(argv=None) -> int:
    global T0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1, help="repetitions of each fault with a random moment (1, 2, 3, 10)")
    p.add_argument("--only", help="comma-separated fault numbers (default: all)")
    p.add_argument("--workdir", help="scratch directory (default: a new one under /tmp); must be empty")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs in logs/)")
    p.add_argument("--cache-dir", help="compilation cache shared by the commands (default: in the scratch directory)")
    p.add_argument("--seed", type=int, help="seed of the random moments (default: drawn and printed)")
    args = p.parse_args(argv)
    sys.path.insert(0, REPO)
    from lip_jax.ranges import RangeError, check

    try:  # the project's integer rule: one line, exit 2
        for flag in ("runs", "seed"):
            if getattr(args, flag) is not None:
                check(flag, getattr(args, flag), what=f"--{flag}")
    except RangeError as e:
        print(f"fault_drill: error: {e}", file=sys.stderr)
        return 2
    args.seed = random.randrange(2**31) if args.seed is None else args.seed
    if args.workdir:
        if os.path.exists(args.workdir) and os.listdir(args.workdir):
            p.error(f"--workdir {args.workdir} is not empty")
        os.makedirs(args.workdir, exist_ok=True)
    else:
        args.workdir = tempfile.mkdtemp(prefix="lip_jax_fault_drill_", dir="/tmp")
    args.workdir = os.path.abspath(args.workdir)
    chosen = sorted(FAULTS) if not args.only else [int(x) for x in args.only.split(",")]
    T0 = time.monotonic()
    drill = Drill(args)
    print(f"fault drill in {args.workdir} (seed {args.seed}, runs {args.runs})", file=sys.stderr, flush=True)
    try:
        for n in chosen:
            try:
                FAULTS[n][1](drill)
            except Exception as e:  # noqa: BLE001 - a drill error is reported as the fault's row
                drill.row(f"{n}. (drill error)", 0, f"FAILED: drill error {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:300]}", True)
    finally:
        drill.unmount_all()
    total = time.monotonic() - T0
    print("| fault | runs | outcome | data lost |")
    print("|---|---|---|---|")
    for r in drill.rows:
        print(f"| {r['fault']} | {r['runs']} | {r['outcome']} | {({True: 'yes', False: 'no', None: '-'})[r['data_lost']]} |")
    failed = [r for r in drill.rows if r["data_lost"]]
    print(f"\nTotal {total:.0f} s; scratch {args.workdir}" + (" (kept)" if args.keep else " (removed)"))
    print(json.dumps({"tool": "fault_drill", "seed": args.seed, "runs": args.runs, "total_s": round(total, 1),
                      "passed": not failed, "faults": drill.rows}))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 1 if failed else 0


T0 = time.monotonic()

if __name__ == "__main__":
    sys.exit(main())
