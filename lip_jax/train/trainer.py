"""The training loop shared by both stages: mesh, sharded state, orbax checkpoints, logs.

    lip-jax train --config configs/X.py --workdir DIR [--config.key=value ...]

One orbax CheckpointManager holds a Composite of the train state and every host's data-iterator
state; saves are asynchronous, the last `keep` are kept, restore reshards onto the current mesh.
SIGTERM saves and exits. A non-finite or absurd step (lip_jax.train.faults.guard) changes no
weight, is reported, and no checkpoint is written at it. Only process 0 writes logs, TensorBoard scalars and sample grids.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lip_jax import sharding as partitioning
from lip_jax.images import to_uint8
from lip_jax.paths import path
from lip_jax.train import faults
from lip_jax.train.checkpoints import DataRestore, DataSave
from lip_jax.weights.errors import CheckpointError
from lip_jax.weights.load import checkpoint_config, load_lpips_any, load_mps, load_vqgan, model_differences
from lip_jax.weights.store import PARAMS, checksums, save_params, verify
from lip_jax.train.writer import Progress, Writer

log = logging.getLogger("lip_jax.train")


@dataclasses.dataclass
class Task:
    """What differs between the stages: how to build the state, the step, the batch and a preview."""

    init_boxed_state: Callable[[jax.Array], Any]
    make_step: Callable[[], Callable]        # -> step(state, batch, *extra) -> (state, metrics)
    extra: tuple = ()                        # frozen inputs of the step (e.g. the DF-VQGAN)
    batch_keys: tuple = ()
    select: Callable[[int], Any] | None = None  # host step -> variant key of make_step (static)
    preview: Callable | None = None          # (state, batch, *extra) -> uint8 [H, W, 3]
    export: Callable[[Any], Any] = lambda params: params  # trained params -> WORKDIR/params tree


def initialize_distributed(config) -> None:
    """Join a multi-process run: explicit flags (local), or the environment (TPU pods, SLURM)."""
    dist = config.get("distributed", None)
    if dist is None or not dist.get("enabled", False):
        return
    if dist.get("cpu_collectives"):
        jax.config.update("jax_cpu_collectives_implementation", dist.cpu_collectives)
    # Unset fields ("", 0, -1) are left to JAX, which reads them from TPU / SLURM environments.
    kwargs = {}
    if dist.get("coordinator_address"):
        kwargs["coordinator_address"] = dist.coordinator_address
    if dist.get("num_processes", 0) > 0:
        kwargs["num_processes"] = dist.num_processes
    if dist.get("process_id", -1) >= 0:
        kwargs["process_id"] = dist.process_id
    jax.distributed.initialize(**kwargs)


def stage_task(config) -> Task:
    if config.stage == 1:
        return _stage1_task(config)
    if config.stage == 2:
        return _stage2_task(config)
    raise ValueError(f"config.stage must be 1 or 2, got {config.stage!r}")


def _stage1_task(config) -> Task:
    from lip_jax.models import dfvqgan, lpips
    from lip_jax.train import stage1

    if config.train.perceptual_weight > 0:
        net = lpips.LPIPS()
        if config.train.get("lpips_ckpt"):
            lp = load_lpips_any(config.train.lpips_ckpt, on_host=False)
        else:
            log.warning("no train.lpips_ckpt: the perceptual loss uses a random VGG (tests only)")
            lp = nn.unbox(lpips.init_params(net, jax.random.key(1)))
        perceptual = stage1.lpips_distance(config, lp)
    else:
        def perceptual(x, y, rng):
            return jnp.zeros(x.shape[0])

    model = dfvqgan.from_config(config.vqgan)

    def preview(state, batch):
        rec, _ = model.apply({"params": state.params}, batch["image"], batch["mask"])
        return _grid([batch["image"], jnp.where(batch["mask"][..., None], 0.0, batch["image"]), rec])

    task = Task(init_boxed_state=lambda rng: stage1.init_boxed_state(config, rng),
                make_step=lambda use_disc: stage1.make_train_step(config, perceptual, use_disc),
                batch_keys=("image", "mask", "decoder_none"),
                select=lambda step: step >= config.train.disc_start, preview=jax.jit(preview))
    task.init_fields = stage1.load_init(config)
    return task


def _stage2_task(config) -> Task:
    from lip_jax.models import dfvqgan
    from lip_jax.sample import sample_tokens
    from lip_jax.train import stage2

    if not config.get("vqgan_ckpt"):
        raise CheckpointError("stage 2 needs config.vqgan_ckpt: an orbax DF-VQGAN checkpoint (lip-jax convert)")
    _agrees(config, config.vqgan_ckpt, "vqgan_ckpt", "vqgan")
    vq = load_vqgan(config.vqgan_ckpt, config.vqgan, on_host=False)
    codebook = vq["quantize"]["embedding"]["embedding"]
    init_ckpt = config.train.get("init_ckpt")
    vq_model = dfvqgan.from_config(config.vqgan)
    mcfg = stage2.mps_config(config)
    sample = config.get("sample", {})

    def preview(state, batch, vq_params):
        # As inference: encode the defective image, sample the hole tokens, decode with its skips.
        n = min(8, batch["image"].shape[0])
        image, mask = batch["image"][:n], batch["mask"][:n]
        x = jnp.where(mask[..., None], 0.0, image)
        enc = vq_model.apply({"params": vq_params}, x, mask, method=dfvqgan.DFVQGAN.encode)
        tokens = sample_tokens(state.params, mcfg, tokens=enc["indices"].reshape(n, -1),
                               token_mask=enc["skip_masks"][-1].reshape(n, -1), image=x,
                               text_ids=batch["text_ids"][:n], rng=jax.random.key(0),
                               top_k=sample.get("top_k", 128), temperature=sample.get("temperature", 1.0))
        rec = vq_model.apply({"params": vq_params}, tokens.reshape(n, *mcfg.grid), enc["skips"], enc["skip_masks"],
                             method=dfvqgan.DFVQGAN.decode_indices)
        return _grid([image, x, rec])

    task = Task(init_boxed_state=lambda rng: stage2.init_boxed_state(config, rng, codebook),
                make_step=lambda _: stage2.make_train_step(config),
                extra=(vq,), batch_keys=("image", "mask", "masked_image", "text_ids"), preview=jax.jit(preview))
    if init_ckpt:
        _agrees(config, init_ckpt, "train.init_ckpt", "mps")
        task.init_fields = {"params": load_mps(init_ckpt, mcfg, on_host=False)}
    task.export = lambda params: {"mps": params, "vqgan": vq}
    return task


def _agrees(config, ckpt, flag: str, section: str) -> None:
    """Weights saved with a config must be of this config's model: one line naming the field,
    not a shape error (a PyTorch file records none and is checked by its shapes alone)."""
    saved = checkpoint_config(ckpt)
    diffs = model_differences({section: config[section]}, saved) if saved is not None else []
    if diffs:
        raise CheckpointError(f"{ckpt} (config.{flag}): saved for another model than this config's: "
                              + "; ".join(diffs[:3]))


def _grid(rows) -> jax.Array:
    """[rows of B images] -> one uint8 image (a row per input kind, up to 8 columns)."""
    rows = [jnp.concatenate(list(r[:8]), axis=1) for r in rows]
    return to_uint8(jnp.concatenate(rows, axis=0))


class HostLoader:
    """This process's share of the global batch: `data.shards` fixed data shards (default: one
    per process), of which this process reads its contiguous part and concatenates the batches.
    The global batch is then the same however many processes read it."""

    def __init__(self, config, process_index: int | None = None, process_count: int | None = None):
        from lip_jax.data import STAGE1_AUGMENT, STAGE2_AUGMENT, Loader, PipelineConfig, open_source
        from lip_jax.models.tokenizer import ByteTokenizer

        index = jax.process_index() if process_index is None else process_index
        count = jax.process_count() if process_count is None else process_count
        d = config.data
        shards = int(d.get("shards") or count)
        if shards % count or d.batch_size % shards:
            raise faults.ConfigError(f"config: data.shards={shards} must be a multiple of the {count} processes "
                                     f"and divide the global batch {d.batch_size}")
        source = open_source(d.source, **dict(d.get("source_kwargs", {})))
        augment = {"stage1": STAGE1_AUGMENT, "stage2": STAGE2_AUGMENT, "none": None}[d.get("augment", "stage2")]
        pcfg = PipelineConfig(image_size=d.image_size, batch_size=d.batch_size // shards, mask=d.mask,
                              augment=augment, vae_patch_size=d.get("vae_patch_size", 8), seed=d.get("seed", 0),
                              worker_count=d.get("workers", 2))
        tokenizer = _tokenizer(config) if config.stage == 2 else ByteTokenizer(8)
        per = shards // count
        self.shards, self.shard_ids = shards, range(index * per, (index + 1) * per)
        self.iters = [iter(Loader(source, pcfg, tokenizer, process_index=s, process_count=shards))
                      for s in self.shard_ids]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        parts = [next(it) for it in self.iters]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _name(self, shard: int) -> str:
        return f"shard_{shard}-of-{self.shards}.json"

    def state_files(self) -> dict:
        """{file name: state} of this process's shards (a checkpoint's data item)."""
        return {self._name(s): it.get_state() for s, it in zip(self.shard_ids, self.iters)}

    def restore_files(self, read, names) -> None:
        """Continue every shard this process reads from its saved state, whichever process (and
        however many) saved it."""
        legacy = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if not any(n.startswith("shard_") for n in names) and legacy in names:  # before per-shard files
            states = read(legacy)["shards"]
            if len(states) != len(self.iters):
                raise CheckpointError(f"data state has {len(states)} shards, this process reads {len(self.iters)}")
            for it, st in zip(self.iters, states):
                it.set_state(st)
            return
        missing = [self._name(s) for s in self.shard_ids if self._name(s) not in names]
        if missing:
            raise CheckpointError(f"no data state {missing[0]} in the checkpoint (it holds {names}): it was "
                                  f"written with another data.shards; resume with the same data.shards")
        for s, it in zip(self.shard_ids, self.iters):
            it.set_state(read(self._name(s)))

    @property
    def skipped(self) -> int:
        return sum(it.stats.skipped for it in self.iters)


def _tokenizer(config):
    from lip_jax.models.tokenizer import get_tokenizer

    return get_tokenizer(config.mps.tokenizer, config.mps.text_len)


def abstract_state(task: Task, mesh) -> tuple[Any, Any]:
    """Shapes of the unboxed state and its shardings (from the parameters' logical axes)."""
    boxed = jax.eval_shape(task.init_boxed_state, jax.random.key(0))
    shardings, notes = partitioning.param_shardings(boxed, mesh)
    for n in notes:
        log.info("partitioning: %s", n)
    return nn.unbox(boxed), shardings


def train(config, workdir, max_steps: int | None = None) -> dict:
    """Run (or resume) training; returns the last metrics. `max_steps` stops early (tests).

    Raises faults.ConfigError before any work for an unusable setting or a workdir in use,
    faults.Interrupted after saving on SIGTERM / SIGINT, faults.Diverged when too many
    consecutive steps were skipped."""
    if not log.handlers:  # own handler: absl may already own the root logger
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    faults.check_config(config)
    initialize_distributed(config)
    workdir = path(workdir)  # gs://bucket/run stays a URL: orbax, logs and grids write there
    faults.check_writable(workdir)
    with faults.WorkdirLock(workdir) as lock, faults.StopSignals(cleanup=lock.release) as stop:
        return _train(config, workdir, max_steps, stop)


def _train(config, workdir, max_steps: int | None, stop) -> dict:
    mesh = partitioning.make_mesh(dict(config.mesh))
    task = stage_task(config)
    total, t = int(config.train.total_steps), config.train
    with jax.set_mesh(mesh):
        shapes, shardings = abstract_state(task, mesh)
        init = jax.jit(lambda r: nn.unbox(task.init_boxed_state(r)), out_shardings=shardings)
        state = init(jax.random.key(config.seed))
        for field, tree in (getattr(task, "init_fields", None) or {}).items():  # train.init_ckpt
            state = state.replace(**{field: jax.device_put(tree, getattr(shardings, field))})
        extra = tuple(jax.device_put(e, partitioning.replicated(mesh)) for e in task.extra)
        data_iter = HostLoader(config)
        manager = ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=t.keep, save_interval_steps=1,
                                                 enable_async_checkpointing=True, cleanup_tmp_directories=True))
        target = jax.tree_util.tree_map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
        restored = restore_latest(manager, target, data_iter)
        state = state if restored is None else restored
        steps: dict = {}
        skip_norm = float(t.get("skip_grad_norm", float("inf")))
        max_ratio = float(t.get("max_update_ratio", faults.MAX_UPDATE_RATIO))

        def step_fn(step, batch):
            key = task.select(step) if task.select else None
            if key not in steps:
                batch_sh = {k: v.sharding for k, v in batch.items()}
                steps[key] = jax.jit(faults.guard(task.make_step(key), skip_norm, max_ratio), donate_argnums=0,
                                     in_shardings=(shardings, *(partitioning.replicated(mesh),) * len(extra), batch_sh),
                                     out_shardings=(shardings, partitioning.replicated(mesh)))
            return steps[key]

        start = int(jax.device_get(state.step))
        end = total if max_steps is None else min(total, start + max_steps)
        writer = Writer(workdir, start)
        last, acc, n_acc, t0, done = {}, None, 0, time.time(), start
        skipped_run, pending, max_skipped = 0, None, int(t.get("max_skipped_steps", 10))
        progress = Progress(start, end, config.data.batch_size, enabled=jax.process_index() == 0)
        try:
            for step in range(start, end):
                local = next(data_iter)
                batch = partitioning.global_batch({k: local[k] for k in task.batch_keys}, mesh)
                state, metrics = step_fn(step, batch)(state, *extra, batch)
                if not stop.running:
                    stop.started()  # compiled and dispatched: a signal now waits for a checkpoint
                done = step + 1
                # The previous step's verdict, read while this one runs: no stall, exact count.
                if pending is not None:
                    skipped_run = 0 if bool(jax.device_get(pending)) else skipped_run + 1
                pending = metrics["finite"]
                if skipped_run >= max_skipped:
                    raise faults.Diverged(
                        f"training diverged: {skipped_run} consecutive steps skipped (non-finite loss, gradient "
                        f"or parameters, gradient norm over train.skip_grad_norm, or an update over "
                        f"train.max_update_ratio={max_ratio:g} of the weights' norm) before step {done}; the last "
                        f"checkpoint is step {manager.latest_step() or 'none'}: lower train.lr or raise "
                        f"train.max_skipped_steps")
                as_float = jax.tree_util.tree_map(lambda v: v.astype(jnp.float32), metrics)  # bools count
                acc = as_float if acc is None else jax.tree_util.tree_map(jnp.add, acc, as_float)
                n_acc += 1
                if done % t.log_every == 0 or done == end:
                    means = jax.device_get(acc)
                    bad = n_acc - int(means.pop("finite"))
                    last = {k: float(v) / n_acc for k, v in means.items()}  # mean over the interval
                    last["skipped"] = float(bad)  # steps of the interval the guard kept out
                    if bad:
                        log.warning("steps %d-%d: %d skipped (non-finite, or over the gradient-norm or update bound); "
                                    "those updates changed nothing", done - n_acc + 1, done, bad)
                    with faults.saving(manager, done, what=str(workdir / "metrics.jsonl"), any_error=False):
                        writer.scalars(done, last)
                    progress.update(done, last)
                    acc, n_acc = None, 0
                if t.get("sample_every") and done % t.sample_every == 0 and task.preview is not None:
                    with faults.saving(manager, done, what=str(workdir / "samples"), any_error=False):
                        writer.image(done, jax.device_get(task.preview(state, batch, *extra)))
                preempted = stop.reached(done)
                save = done % t.save_every == 0 or done == end or preempted
                if save and not bool(jax.device_get(metrics["finite"])):
                    log.warning("step %d: skipped step; no checkpoint written at this step", done)
                elif save:
                    with faults.saving(manager, done):
                        manager.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                   data=DataSave(data_iter)),
                                     custom_metadata={"checksums": checksums(state)})
                if preempted:
                    break
        finally:
            progress.close()
            with faults.saving(manager, done, what=str(workdir / "tb"), any_error=False):
                writer.close()
            with faults.saving(manager, done):  # an asynchronous save's failure surfaces here
                manager.wait_until_finished()
            manager.close()
        if stop.stopped:
            raise faults.Interrupted(manager.latest_step() or 0, stop.signum)
        if done == total:  # only a finished run leaves inference weights
            with faults.saving(manager, done, what=str(workdir / PARAMS)):
                save_params(workdir / PARAMS, task.export(state.params), overwrite=True, config=config)
        last["steps_per_s"] = (done - start) / max(time.time() - t0, 1e-9)
        return {"step": done, "metrics": last, "state": state, "skipped_examples": data_iter.skipped}


def restore_latest(manager, target, data_iter):
    """The newest checkpoint that restores and verifies (older ones are tried after a warning), or
    None for a fresh run."""
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=DataRestore(data_iter)))
            custom = manager.metadata(step).custom_metadata or {}
            verify(f"{manager.directory}/{step}", restored.state, custom.get("checksums"))
        except Exception as e:  # corrupted or truncated: orbax raises many types
            log.warning("checkpoint step %d does not verify (%s); trying an older one",
                        step, " ".join(str(e).split())[:300])
            continue
        log.info("resumed from step %d", step)
        return restored.state
    if manager.all_steps():
        raise CheckpointError(f"{manager.directory}: no checkpoint verifies (steps {sorted(manager.all_steps())}); "
                              f"move the checkpoints away to start afresh")
    return None
