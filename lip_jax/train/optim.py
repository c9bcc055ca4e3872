"""The official optimizers' update rules where optax's differ.

Stage 2 of the official code (`finetune.py`) uses `transformers.AdamW(lr, eps=1e-8)` (the library's
own, since removed, AdamW class) under `get_linear_schedule_with_warmup`. Its rule, at step t >= 1:

    m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
    p <- p - lr_t * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    p <- p - lr_t * weight_decay * p            (decoupled, on the updated p)

It differs from `optax.adamw` (m_hat / (sqrt(v_hat) + eps)) in where eps sits: relative to the
bias-corrected root it is eps / sqrt(1 - b2^t), ~30x larger on the first step at b2 = 0.999.
The bias corrections are python floats (float64) there; here they come from a float64 table
computed on the host, so the step size is rounded to float32 once (optax computes `1 - b^t` in
float32, ~1e-5 off on the first steps).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Past this many steps the table ends (1 MiB); later corrections are then computed in float32.
MAX_TABLE = 1 << 18


def linear_warmup_schedule(lr: float, warmup: int, total: int) -> Callable[[jax.Array], jax.Array]:
    """`transformers.get_linear_schedule_with_warmup`: update k (0-based) uses lr * f(k),
    f(k) = k / max(1, warmup) during warm-up, then max(0, (total - k) / max(1, total - warmup))."""
    warmup, total = int(warmup), int(total)

    def schedule(count):
        k = jnp.asarray(count, jnp.float32)
        up = k / max(1, warmup)
        down = jnp.maximum(0.0, (total - k) / max(1, total - warmup))
        return lr * jnp.where(k < warmup, up, down)

    return schedule


def official_warmup_steps(fraction: float, total: int) -> int:
    """`int(len(loader) * epochs * 0.05)`: truncated, not rounded."""
    return int(total * fraction)


def bias_correction_table(b1: float, b2: float, limit: int = MAX_TABLE) -> np.ndarray:
    """float32 sqrt(1 - b2^t) / (1 - b1^t) for t = 0..N (entry 0 unused), computed in float64 as
    python does, up to the first N from which every later value rounds to 1.0 in float32."""
    out = [1.0]
    for t in range(1, limit):
        out.append(math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t))
        # |1 - factor| < 2^-26 from here on: float32 rounds it to 1 (spacing 2^-24 below, 2^-23 above).
        if b1 ** t < 2.0 ** -27 and b2 ** t < 2.0 ** -27:
            out.append(1.0)
            break
    return np.asarray(out, np.float32)


class TransformersAdamWState(NamedTuple):
    count: jax.Array  # updates done so far (int32)
    mu: Any
    nu: Any


def transformers_adamw(learning_rate: float | Callable, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
                       weight_decay: float = 0.0, correct_bias: bool = True) -> optax.GradientTransformation:
    """The `transformers.AdamW` update rule (defaults as that class: eps 1e-6, no weight decay).

    `learning_rate` is a float or a schedule of the update count (0 for the first update, as
    `LambdaLR` stepped after each optimizer step). The returned updates are to be added to the
    parameters (`optax.apply_updates`); `update` needs `params` when weight_decay > 0.
    """
    table = bias_correction_table(b1, b2) if correct_bias else np.ones(1, np.float32)
    schedule = learning_rate if callable(learning_rate) else (lambda count: jnp.asarray(learning_rate, jnp.float32))

    def init(params):
        zeros = lambda p: jnp.zeros_like(p, dtype=jnp.result_type(p, jnp.float32))  # noqa: E731
        return TransformersAdamWState(count=jnp.zeros((), jnp.int32), mu=jax.tree_util.tree_map(zeros, params),
                                      nu=jax.tree_util.tree_map(zeros, params))

    def correction(t):
        exact = jnp.asarray(table)[jnp.minimum(t, table.shape[0] - 1)]
        if not correct_bias or table.shape[0] < MAX_TABLE:
            return exact
        tf = t.astype(jnp.float32)  # beyond the table (only for b2 very close to 1)
        late = jnp.sqrt(1.0 - jnp.power(b2, tf)) / (1.0 - jnp.power(b1, tf))
        return jnp.where(t < table.shape[0], exact, late)

    def update(grads, state, params=None):
        if weight_decay and params is None:
            raise ValueError("transformers_adamw with weight_decay needs params")
        t = state.count + 1
        mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, grads)
        nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state.nu, grads)
        lr = schedule(state.count)
        step_size = lr * correction(t)

        def one(m, v, p):
            u = (-step_size * m) / (jnp.sqrt(v) + eps)
            if weight_decay:
                u = u - lr * weight_decay * (p + u)
            return u.astype(m.dtype)

        ps = params if params is not None else mu
        updates = jax.tree_util.tree_map(one, mu, nu, ps)
        return updates, TransformersAdamWState(count=optax.safe_increment(state.count), mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def update_count(opt_state) -> jax.Array:
    """Updates done so far by an optimizer state (its first `count`): the schedule's argument for
    the next update. A skipped (non-finite) step does not advance it, unlike the train step."""
    for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda s: hasattr(s, "count")):
        if hasattr(s, "count"):
            return s.count
    raise ValueError("optimizer state has no update count")


def group_grad_norms(grads, name: str | None = None) -> dict:
    """{"grad_norm/<group>": L2 norm} for each top-level group of a gradient tree (or one `name`)."""
    if name is not None:
        return {f"grad_norm/{name}": optax.tree.norm(grads)}
    return {f"grad_norm/{k}": optax.tree.norm(v) for k, v in grads.items()}
