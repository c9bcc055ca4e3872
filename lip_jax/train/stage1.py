"""Stage 1: DF-VQGAN training, as the official `dfvq4imagenet` recipe.

Per batch, as the official trainer: a generator (autoencoder) update with L1 + LPIPS + codebook +
adaptive-weight hinge-GAN losses, then, once the discriminator is on, a discriminator update on a
fresh reconstruction by the updated autoencoder. Both `torch.optim.Adam` (= optax.adam: eps 1e-8
added to the bias-corrected root), betas (0.5, 0.9), learning rate 4.5e-6 x the batch of one update
(official `gradient_accumulate_steps x train_batch_size x learning_rate`: here `data.batch_size` is
the batch of one update, and stage 1 has no gradient accumulation). A step with a non-finite loss
says so (`finite`); faults.guard, which the trainer wraps every step in, then keeps the old state.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from lip_jax.models import dfvqgan
from lip_jax.models.discriminator import NLayerDiscriminator
from lip_jax.train.optim import group_grad_norms

Perceptual = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (x, y, rng) -> [B] distances


@flax.struct.dataclass
class State:
    step: jax.Array
    params: Any
    opt: Any
    disc_params: Any
    disc_stats: Any
    disc_opt: Any
    rng: jax.Array


def learning_rate(cfg) -> float:
    """Official: base rate x the examples of one update (`data.batch_size`, as in stage 2, where
    `grad_accum` only splits that batch into microbatches)."""
    if int(cfg.train.get("grad_accum", 1)) != 1:
        from lip_jax.train.faults import ConfigError

        # Per microbatch the adaptive GAN weight and the BatchNorm statistics would differ from
        # the official per-batch ones; a smaller batch is the honest alternative.
        raise ConfigError("train.grad_accum must be 1 in stage 1 (no gradient accumulation there); "
                         "data.batch_size is the batch of one update")
    return cfg.train.base_lr * cfg.data.batch_size


def schedule(cfg):
    """Rate of update k: the official constant `learning_rate`, or with `train.lr_decay="cosine"` (short
    runs such as the demo, where the last steps at a high constant rate leave the weights noisy) a
    cosine decay from it to zero over `train.total_steps`."""
    peak, decay = learning_rate(cfg), cfg.train.get("lr_decay", "constant")
    if decay == "constant":
        return peak  # a float: the optimizer state stays that of the official constant-rate Adam
    if decay == "cosine":
        return optax.cosine_decay_schedule(peak, int(cfg.train.total_steps))
    from lip_jax.train.faults import ConfigError

    raise ConfigError(f"train.lr_decay must be 'constant' or 'cosine', got {decay!r}")


def optimizer(cfg) -> optax.GradientTransformation:
    return optax.adam(schedule(cfg), b1=0.5, b2=0.9)


def init_boxed(cfg, rng: jax.Array):
    """Boxed (logically partitioned) parameters of the autoencoder and the discriminator."""
    k1, k2 = jax.random.split(rng)
    model = dfvqgan.from_config(cfg.vqgan)
    params = dfvqgan.init_params(model, k1)
    disc = NLayerDiscriminator(ndf=cfg.train.disc_ndf, n_layers=cfg.train.disc_layers)
    r = cfg.vqgan.resolution
    dvars = jax.jit(lambda k: disc.init(k, jnp.zeros((2, r, r, 3)), train=True))(k2)
    return params, dvars["params"], dvars["batch_stats"]


def init_boxed_state(cfg, rng: jax.Array) -> State:
    """Initial state whose parameters and optimizer moments carry their logical axes."""
    k_init, k_state = jax.random.split(rng)
    params, dparams, dstats = init_boxed(cfg, k_init)
    tx = optimizer(cfg)
    return State(step=jnp.zeros((), jnp.int32), params=params, opt=tx.init(params), disc_params=dparams,
                 disc_stats=dstats, disc_opt=tx.init(dparams), rng=k_state)


def load_init(cfg) -> dict | None:
    """`train.init_ckpt` -> the state fields to start from: an orbax DF-VQGAN checkpoint (`lip-jax
    convert --kind dfvqgan` of an official model or stage-1 training checkpoint),
    with its discriminator (weights and running statistics) when it holds one. Optimizer moments
    start at zero (the official Adam states are not converted)."""
    path = cfg.train.get("init_ckpt")
    if not path:
        return None
    from lip_jax.weights.load import load_vqgan_with_discriminator
    from lip_jax.weights.discriminator import size_of_tree
    from lip_jax.weights.errors import CheckpointError

    params, disc = load_vqgan_with_discriminator(path, cfg.vqgan)
    fields = {"params": params}
    if disc is None:
        import logging

        logging.getLogger("lip_jax.train").warning("%s holds no discriminator: it starts from random weights", path)
        return fields
    want = (int(cfg.train.disc_ndf), int(cfg.train.disc_layers))
    if size_of_tree(disc) != want:
        raise CheckpointError(f"{path}: discriminator (ndf, n_layers) = {size_of_tree(disc)}, the config has "
                              f"train.disc_ndf, train.disc_layers = {want}")
    fields.update(disc_params=disc["params"], disc_stats=disc["batch_stats"])
    return fields


def lpips_distance(cfg, lpips_params) -> Perceptual:
    """The LPIPS perceptual loss; its head dropout is active, as in the official training (the
    trainer's `model.train()` also switches the frozen LPIPS into training mode)."""
    from lip_jax.models.lpips import LPIPS

    net = LPIPS()
    dropout = bool(cfg.train.get("lpips_dropout", True))

    def distance(x, y, rng):
        d = net.apply({"params": lpips_params}, x, y, deterministic=not dropout, rngs={"dropout": rng})
        return d.reshape(x.shape[0])

    return distance


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def _last_layer(tree):
    return tree["decoder"]["conv_out"]["kernel"]


def make_train_step(cfg, perceptual: Perceptual, use_disc: bool, details: bool | None = None):
    """(state, batch) -> (state, metrics). `use_disc` is static: before the discriminator starts,
    neither the GAN loss nor the discriminator is computed (official disc_factor = 0).

    metrics: loss and its terms (rec_loss, p_loss, q_loss, g_loss, d_weight, d_loss), finite. With
    `details` (default `train.log_details`), also `lr` and `grad_norm/<group>` (each top-level
    parameter group and the discriminator) of the update: a separate compiled step, so the
    default one does not compute them."""
    if details is None:
        details = bool(cfg.train.get("log_details", False))
    model = dfvqgan.from_config(cfg.vqgan)
    disc = NLayerDiscriminator(ndf=cfg.train.disc_ndf, n_layers=cfg.train.disc_layers)
    tx = optimizer(cfg)
    t = cfg.train

    def run_disc(dparams, dstats, x):
        logits, upd = disc.apply({"params": dparams, "batch_stats": dstats}, x, train=True, mutable=["batch_stats"])
        return logits, upd["batch_stats"]

    def losses(params, dparams, dstats, batch, rng):
        x = batch["image"]
        rec, enc = model.apply({"params": params}, x, batch["mask"], batch["decoder_none"])
        rec_loss = jnp.mean(jnp.abs(x - rec))
        p_loss = jnp.mean(perceptual(x, rec, rng))
        nll = rec_loss + t.perceptual_weight * p_loss
        if use_disc:
            logits_fake, dstats = run_disc(dparams, dstats, rec)
            g_loss = -jnp.mean(logits_fake)
        else:
            g_loss = jnp.zeros(())
        aux = dict(rec_loss=rec_loss, p_loss=p_loss, q_loss=enc["loss"], nll=nll, g_loss=g_loss, dstats=dstats)
        return (nll, g_loss, enc["loss"]), aux

    def step(state: State, batch: dict):
        rng, k_gen = jax.random.split(state.rng)
        (nll, g_loss, q_loss), vjp, aux = jax.vjp(
            lambda p: losses(p, state.disc_params, state.disc_stats, batch, k_gen), state.params, has_aux=True)
        one, zero = jnp.ones(()), jnp.zeros(())
        if use_disc:
            # Adaptive weight: ratio of gradient norms at the decoder's last conv (only that slice of
            # these two pullbacks is used, so XLA prunes the rest of their backward passes).
            g_nll = _last_layer(vjp((one, zero, zero))[0])
            g_gan = _last_layer(vjp((zero, one, zero))[0])
            d_weight = jnp.linalg.norm(g_nll) / (jnp.linalg.norm(g_gan) + 1e-4)
            d_weight = jax.lax.stop_gradient(jnp.clip(d_weight, 0.0, 1e4) * t.discriminator_weight)
        else:
            d_weight = zero
        (grads,) = vjp((one, d_weight, jnp.full((), t.codebook_weight)))
        loss = nll + d_weight * g_loss + t.codebook_weight * q_loss
        updates, opt = tx.update(grads, state.opt, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(loss=loss, rec_loss=aux["rec_loss"], p_loss=aux["p_loss"], q_loss=q_loss,
                       g_loss=g_loss, d_weight=d_weight)
        if details:
            rate = schedule(cfg)
            rate = rate(state.step) if callable(rate) else rate
            metrics.update(lr=jnp.asarray(rate, jnp.float32), **group_grad_norms(grads))
        dparams, dstats, dopt = state.disc_params, aux["dstats"], state.disc_opt
        if use_disc:
            x = batch["image"]
            rec, _ = model.apply({"params": params}, x, batch["mask"], batch["decoder_none"])
            rec = jax.lax.stop_gradient(rec)

            def d_loss_fn(dp):
                real, st = run_disc(dp, dstats, x)
                fake, st = run_disc(dp, st, rec)
                return hinge_d_loss(real, fake), st

            (d_loss, dstats_new), dgrads = jax.value_and_grad(d_loss_fn, has_aux=True)(dparams)
            dupd, dopt = tx.update(dgrads, state.disc_opt, dparams)
            dparams, dstats = optax.apply_updates(dparams, dupd), dstats_new
            metrics["d_loss"] = d_loss
            if details:
                metrics.update(group_grad_norms(dgrads, "discriminator"))
            loss = loss + d_loss
        # `finite` is read by faults.guard, which keeps the old weights and moments of a step that
        # fails it (one select per leaf there, not a second one here).
        new = State(step=state.step + 1, rng=rng, params=params, opt=opt, disc_params=dparams, disc_stats=dstats,
                    disc_opt=dopt)
        metrics["finite"] = jnp.isfinite(loss)
        return new, metrics

    return step
