"""Stage 2: MP-S2S training, as the official `mps4cc` (pre-training) / `mps4coco` (fine-tuning).

A frozen DF-VQGAN turns the ground truth (with the stage-2 mask) into target tokens; the
transformer sees the known tokens, the defective image and the caption, and is trained with
cross-entropy on the hole tokens only. The official optimizer, `transformers.AdamW` (eps 1e-8, no
weight decay; its update rule in `lip_jax.train.optim`), under `get_linear_schedule_with_warmup`
with int(5% x total) warm-up steps; `train.optimizer = "optax_adamw"` selects optax's AdamW
instead (eps inside the bias-corrected root). Gradient accumulation over microbatches inside the
step; dropout on; a non-finite step says so (`finite`) and faults.guard keeps the old state.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from lip_jax.models import dfvqgan, mps2s
from lip_jax.sharding import constrain_batch
from lip_jax.train import optim

OPTIMIZERS = ("transformers_adamw", "optax_adamw")


@flax.struct.dataclass
class State:
    step: jax.Array
    params: Any
    opt: Any
    rng: jax.Array


def schedule(cfg):
    """Learning rate of update k (0-based): official linear warm-up over int(fraction x total)
    updates, then linear decay to 0 at `total_steps`."""
    t = cfg.train
    return optim.linear_warmup_schedule(t.lr, optim.official_warmup_steps(t.warmup_fraction, t.total_steps),
                                        t.total_steps)


def optimizer(cfg) -> optax.GradientTransformation:
    t = cfg.train
    name, wd = t.get("optimizer", "transformers_adamw"), t.get("weight_decay", 0.0)
    if name == "transformers_adamw":
        tx = optim.transformers_adamw(schedule(cfg), b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)
    elif name == "optax_adamw":
        tx = optax.adamw(schedule(cfg), b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)
    else:
        from lip_jax.train.faults import ConfigError

        raise ConfigError(f"train.optimizer={name!r}: choose from {', '.join(OPTIMIZERS)}")
    if t.get("max_grad_norm"):
        tx = optax.chain(optax.clip_by_global_norm(t.max_grad_norm), tx)
    return tx


def mps_config(cfg) -> mps2s.MPSConfig:
    return mps2s.MPSConfig.from_any(cfg.mps)


def init_boxed(cfg, rng: jax.Array, codebook=None):
    """Boxed parameters; `vae_emb` starts from the DF-VQGAN codebook when given (official)."""
    params = mps2s.init_boxed(mps_config(cfg), rng)
    if codebook is not None:
        box = params["vae_emb"]["embedding"]
        if tuple(box.value.shape) != tuple(codebook.shape):
            raise ValueError(f"DF-VQGAN codebook {tuple(codebook.shape)} does not fit vae_emb {tuple(box.value.shape)}")
        params["vae_emb"]["embedding"] = box.replace_boxed(jnp.array(codebook, box.value.dtype))  # a copy: the state is donated
    return params


def init_boxed_state(cfg, rng: jax.Array, codebook=None) -> State:
    """Initial state whose parameters and optimizer moments carry their logical axes."""
    k1, k2 = jax.random.split(rng)
    params = init_boxed(cfg, k1, codebook)
    return State(step=jnp.zeros((), jnp.int32), params=params, opt=optimizer(cfg).init(params), rng=k2)


def targets(vq_model: dfvqgan.DFVQGAN, vq_params, image: jax.Array, mask: jax.Array):
    """Official targets: DF-VQGAN indices of the ground truth under the stage-2 mask, and the
    latent hole mask the encoder derives (the last level of its mask pyramid)."""
    enc = vq_model.apply({"params": vq_params}, image, mask, method=dfvqgan.DFVQGAN.encode)
    tokens = enc["indices"].reshape(image.shape[0], -1)
    return jax.lax.stop_gradient(tokens), enc["skip_masks"][-1].reshape(image.shape[0], -1)


def make_train_step(cfg, details: bool | None = None):
    """(state, vq_params, batch) -> (state, metrics); batch keys: image, mask, masked_image, text_ids.

    metrics: loss, accuracy, hole_tokens, finite. With `details` (default `train.log_details`), also
    `lr` (of this update) and `grad_norm/<group>` (each top-level parameter group, before any
    clipping): a separate compiled step, so the default one does not compute them."""
    if details is None:
        details = bool(cfg.train.get("log_details", False))
    lr_of = schedule(cfg)
    mcfg = mps_config(cfg)
    model = mps2s.MPS2S(mcfg)
    vq_model = dfvqgan.from_config(cfg.vqgan)
    tx = optimizer(cfg)
    accum = int(cfg.train.get("grad_accum", 1))

    def loss_fn(params, vq_params, mb, rng):
        tokens, token_mask = targets(vq_model, vq_params, mb["image"], mb["mask"])
        logits = model.apply({"params": params}, tokens, token_mask, mb["masked_image"], mb["text_ids"],
                             deterministic=False, rngs={"dropout": rng})
        total, holes = mps2s.hole_nll(logits, tokens, token_mask)
        correct = (jnp.argmax(logits, -1) == tokens).astype(jnp.float32)
        # Sums, so microbatches combine into the official batch mean over hole tokens.
        return total, (holes, jnp.sum(correct * token_mask.astype(jnp.float32)))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: State, vq_params, batch: dict):
        rng, k = jax.random.split(state.rng)
        keys = jax.random.split(k, accum)
        if accum == 1:
            (total, (holes, correct)), grads = grad_fn(state.params, vq_params, constrain_batch(batch), keys[0])
        else:
            # Microbatch i = examples i, i + accum, ...: each device's batch shard splits evenly
            # into the microbatches, so no example moves between devices.
            micro = jax.tree_util.tree_map(
                lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)

            def body(carry, inputs):
                grads, total, holes, correct = carry
                mb, key = inputs
                (s, (h, c)), g = grad_fn(state.params, vq_params, constrain_batch(mb), key)
                return (jax.tree_util.tree_map(jnp.add, grads, g), total + s, holes + h, correct + c), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            (grads, total, holes, correct), _ = jax.lax.scan(body, (zeros, 0.0, 0.0, 0.0), (micro, keys))
        denom = jnp.maximum(holes, 1.0)
        grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
        loss = total / denom
        updates, opt = tx.update(grads, state.opt, state.params)
        params = optax.apply_updates(state.params, updates)
        # `finite` is read by faults.guard, which keeps the old state of a step that fails it.
        new = State(step=state.step + 1, params=params, opt=opt, rng=rng)
        metrics = dict(loss=loss, accuracy=correct / denom, hole_tokens=holes, finite=jnp.isfinite(loss))
        if details:
            metrics.update(lr=lr_of(optim.update_count(state.opt)), **optim.group_grad_norms(grads))
        return new, metrics

    return step
