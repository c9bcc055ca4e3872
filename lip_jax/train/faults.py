"""What keeps a training run honest under faults: settings checked before any work, one trainer per
workdir, SIGTERM and Ctrl-C handled alike (checkpoint, then a non-zero exit), and a divergence guard
(a step that would make the state non-finite, whose gradient norm passes a bound, or whose update
moves the parameters by more than `train.max_update_ratio` times their norm, changes nothing; a
run of such steps ends the run).

Each fault has its exit code here (DIVERGED_EXIT, SAVE_FAILED_EXIT, INTERRUPTED_EXIT); the list of
every exit code of `lip-jax` and what it means is lip_jax.cli's docstring.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import socket
import sys
import threading

import jax
import jax.numpy as jnp

from lip_jax import ranges
from lip_jax.paths import is_url, path, write_probe

INTERRUPTED_EXIT, DIVERGED_EXIT, SAVE_FAILED_EXIT = 75, 3, 74


class ConfigError(ValueError):
    """A training setting that cannot work: reported in one line before any work."""


class Interrupted(Exception):
    """SIGTERM / SIGINT: a checkpoint was saved at `step`."""

    def __init__(self, step: int, signum: int):
        super().__init__(_interrupted(step, signum))
        self.step = step


def _interrupted(step: int | None, signum: int) -> str:
    name = signal.Signals(signum).name
    if step is None:  # start-up: the checkpoints before it stand
        return (f"interrupted by {name} during start-up, before the first step: nothing new to save; "
                f"rerun the same command to resume")
    return f"interrupted by {name} at step {step}: checkpoint saved; rerun the same command to resume"


class Diverged(Exception):
    """Too many consecutive skipped steps."""


class SaveFailed(Exception):
    """A checkpoint could not be written; the ones before it are intact."""


def check_writable(workdir) -> None:
    """The workdir exists (or can be made) and takes a file: checked before any work, local or in
    an object store alike."""
    wd = path(workdir)
    try:
        if wd.exists() and not wd.is_dir():
            raise ConfigError(f"{workdir}: the workdir is a file")
        wd.mkdir(parents=True, exist_ok=True)
        write_probe(wd)
    except ConfigError:
        raise
    except OSError as e:
        raise ConfigError(f"{workdir}: cannot write to the workdir ({e.strerror or e})") from None
    except Exception as e:  # object-store clients raise their own types (auth, missing bucket)
        raise ConfigError(f"{workdir}: cannot write to the workdir ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]})") from None


@contextlib.contextmanager
def saving(manager, step: int, what: str | None = None, any_error: bool = True):
    """Turn a failed write (disk full, read-only or vanished storage) into one SaveFailed line;
    `any_error=False`: only failures rooted in an OSError (logs), others stay bugs."""
    try:
        yield
    except (ConfigError, Interrupted, Diverged, SaveFailed):
        raise
    except Exception as e:
        cause = _root_oserror(e)
        if cause is None and not any_error:
            raise
        reason = (f"{errno.errorcode.get(cause.errno, cause.errno)}: {cause.strerror}" if cause is not None
                  else f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
        latest = [s for s in manager.all_steps() if s != step] if what is None else manager.all_steps()
        raise SaveFailed(f"{what or manager.directory}: writing step {step} failed ({reason}); the last complete "
                         f"checkpoint is step {max(latest) if latest else 'none'}, intact") from e


def _root_oserror(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e
        e = e.__cause__ or e.__context__
    return None


def check_config(config) -> None:
    """Every numeric training setting, before the first byte of work: the integers against their
    ranges (lip_jax.ranges, the rule of every command), the rates here."""
    t = config.train
    for name in ("total_steps", "keep", "save_every", "log_every"):
        if name not in t:
            raise ConfigError(f"config: need train.{name}")
    if "batch_size" not in config.data:
        raise ConfigError("config: need data.batch_size")
    ranges.check_config(config)
    problems = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    def finite(x) -> bool:
        return isinstance(x, (int, float)) and math.isfinite(x)

    for name in ("lr", "base_lr"):
        if name in t:
            need(finite(t[name]) and t[name] > 0, f"train.{name} finite and > 0 (got {t[name]!r})")
    for name in ("weight_decay", "max_grad_norm", "warmup_fraction"):
        if name in t:
            need(finite(t[name]) and t[name] >= 0, f"train.{name} finite and >= 0 (got {t[name]!r})")
    need(finite(t.get("skip_grad_norm", math.inf)) or t.get("skip_grad_norm") == math.inf,
         "train.skip_grad_norm a number")
    ratio = t.get("max_update_ratio", MAX_UPDATE_RATIO)
    need(finite(ratio) and ratio > 0, f"train.max_update_ratio finite and > 0 (got {ratio!r})")
    if problems:
        raise ConfigError("config: need " + "; ".join(problems))


class WorkdirLock:
    """One trainer per workdir: `WORKDIR/.lock` holds host and pid; a lock whose process is gone
    (same host) is stale and taken over. Only process 0 of a multi-process run holds it."""

    def __init__(self, workdir):
        self.path = path(workdir) / ".lock"
        self.held = False

    def __enter__(self):
        if jax.process_index() != 0:
            return self
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                self._create(me)
            except FileExistsError:
                host, _, pid = self.path.read_text().partition(" ")
                if host == socket.gethostname() and pid.strip().isdigit() and not _alive(int(pid)):
                    self.path.unlink()  # stale: its trainer died without cleaning up
                    continue
                raise ConfigError(f"{self.path.parent}: in use by another trainer ({host} pid "
                                  f"{pid.strip()}); if none runs, remove {self.path}") from None
            self.held = True
            return self
        raise ConfigError(f"{self.path}: cannot take the workdir lock")

    def _create(self, me: str) -> None:
        if is_url(self.path):
            # Object stores have no O_EXCL through epath: check, then write (a race of two
            # trainers started within a request's time is not caught there).
            if self.path.exists():
                raise FileExistsError(str(self.path))
            self.path.write_text(me)
            return
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(me)

    def __exit__(self, *exc):
        self.release()

    def release(self) -> None:
        if self.held and self.path.exists():
            self.path.unlink()
        self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StopSignals:
    """SIGTERM and SIGINT set a flag the loop reads between steps (no KeyboardInterrupt from inside
    the data loader); a second Ctrl-C stops at once. Until `started()` (the first step compiled and
    ran) there is nothing new to save: a signal ends the process at once with exit 75 and one line,
    `cleanup` run first (the workdir lock). A watchdog thread, woken through the signal module's
    wakeup fd, does it when the main thread is held in native code (a compilation, a large
    allocation), where Python runs no handler; raising into that code instead can crash the
    interpreter at exit.

    Several processes must agree on the step they save at, or the collective save hangs or mixes
    steps: the signal reaches hosts at different steps. There SIGTERM is left to JAX's preemption
    service (installed by jax.distributed.initialize: it tells the coordinator, which picks one
    step all hosts reach), a Ctrl-C is handed to it as a SIGTERM, and `reached(step)` asks it."""

    def __init__(self, cleanup=None, message: str | None = None):
        self.message = message  # the line of an abort (default: training's start-up one)
        self.signum = None
        self.stopped = False  # set by `reached`: the loop saved and stops (all hosts alike)
        self.running = False  # set by `started`: signals now wait for the step's end and a save
        self.cleanup = cleanup
        self._aborting = threading.Lock()
        from jax._src import distributed

        self.shared = distributed.global_state.preemption_sync_manager is not None

    def _handle(self, signum, frame):
        if not self.running:
            self._abort(signum)
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self.shared:
            os.kill(os.getpid(), signal.SIGTERM)  # to the preemption service: all hosts agree

    def _abort(self, signum: int) -> None:
        with self._aborting:  # the handler and the watchdog may both get here: one line
            line = (self.message.format(signal=signal.Signals(signum).name) if self.message
                    else _interrupted(None, signum))
            sys.stderr.write(f"lip-jax: {line}\n")
            sys.stderr.flush()
            try:
                if self.cleanup is not None:
                    self.cleanup()
            finally:
                os._exit(INTERRUPTED_EXIT)

    def __enter__(self):
        ours = (signal.SIGINT,) if self.shared else (signal.SIGTERM, signal.SIGINT)
        self.previous = {s: signal.signal(s, self._handle) for s in ours}
        self._done = threading.Event()
        r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._wakeup = signal.set_wakeup_fd(self._w)  # written by the C handler, even mid native call
        threading.Thread(target=self._watch, args=(r, ours), daemon=True, name="lip_jax-stop-watchdog").start()
        return self

    def _watch(self, fd: int, ours) -> None:
        with open(fd, "rb", buffering=0) as r:
            while True:
                got = r.read(1)
                if not got or self._done.is_set():
                    return
                if not self.running and got[0] in ours:
                    self._abort(got[0])

    def started(self) -> None:
        """The first step ran: from now on a signal saves a checkpoint after the current step."""
        self.running = True

    def reached(self, step: int) -> bool:
        """Save and stop after `step`? Called by every process at every step."""
        if not self.shared:
            self.stopped = self.signum is not None
        else:
            from jax.experimental import multihost_utils

            self.stopped = multihost_utils.reached_preemption_sync_point(step)
            if self.stopped:
                self.signum = self.signum or signal.SIGTERM  # this host may not have seen it
        return self.stopped

    def __exit__(self, *exc):
        self._done.set()
        signal.set_wakeup_fd(self._wakeup)
        os.close(self._w)  # the watchdog's read returns
        for s, h in self.previous.items():
            signal.signal(s, h)


# A healthy Adam step moves each weight by about the learning rate, so its update's norm against
# the parameters' is about lr / rms(weight): under 0.05 for every official recipe's first steps
# (tests/test_train_faults.py measures the tiny presets). A ratio near 1 replaces the weights by
# the update: the finite blow-up (|w| ~ 1e30) of an absurd learning rate, which a non-finite check
# only sees one step too late, after it reached a checkpoint.
MAX_UPDATE_RATIO = 1.0


def guard(step_fn, skip_grad_norm: float, max_update_ratio: float = MAX_UPDATE_RATIO):
    """Wrap a train step: keep the old state (all but step and rng) when the loss, the gradient
    norm or any updated parameter is non-finite, the gradient norm passes `skip_grad_norm`, or the
    update moves the parameters by more than `max_update_ratio` times their norm
    (||new - old|| / ||old||, over every trained parameter field; metric `update_ratio`)."""
    def guarded(state, *args):
        new, metrics = step_fn(state, *args)
        ratio = update_ratio(state, new)
        ok = metrics["finite"] & all_finite(new) & (ratio <= max_update_ratio)
        if "grad_norm" in metrics:
            ok &= jnp.isfinite(metrics["grad_norm"]) & (metrics["grad_norm"] <= skip_grad_norm)
        fields = {f: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), getattr(new, f), getattr(state, f))
                  for f in new.__dataclass_fields__ if f not in ("step", "rng")}
        return new.replace(**fields), dict(metrics, finite=ok, update_ratio=ratio)
    return guarded


def update_ratio(old, new) -> jax.Array:
    """||new - old|| / ||old|| over the float leaves of the state's parameter fields (`params`,
    `disc_params`; not the optimizer moments, which start at zero), in float32. The largest
    ratio over the fields: a discriminator blowing up is not hidden by a larger autoencoder."""
    ratios = []
    for f in old.__dataclass_fields__:
        if not f.endswith("params"):
            continue
        pairs = [(a.astype(jnp.float32), b.astype(jnp.float32))
                 for a, b in zip(jax.tree_util.tree_leaves(getattr(old, f)), jax.tree_util.tree_leaves(getattr(new, f)))
                 if jnp.issubdtype(a.dtype, jnp.floating)]
        if not pairs:
            continue
        moved = sum(jnp.sum(jnp.square(b - a)) for a, b in pairs)
        size = sum(jnp.sum(jnp.square(a)) for a, _ in pairs)
        # the floor only avoids 0 / 0: every model's parameter fields hold non-zero kernels
        ratios.append(jnp.sqrt(moved) / jnp.maximum(jnp.sqrt(size), 1e-12))
    return jnp.max(jnp.stack(ratios)) if ratios else jnp.zeros((), jnp.float32)


def all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
