"""Random test weights built from a parameter template (no model.init to compile)."""

import jax
import numpy as np


def random_params(template, seed):
    """Random weights from shapes alone: compiling model.init of DF-VQGAN costs ~30 s on 2 cores."""
    rng = np.random.default_rng(seed)

    def leaf(path, t):
        name, shape = path[-1].key, t.shape
        if name == "kernel":
            return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
        if name == "scale" and len(shape) == 1:  # norms (LayerScale is 3-d)
            return (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        if name == "bias":
            return (0.05 * rng.standard_normal(shape)).astype(np.float32)
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, template)


def save_stage2(directory, config) -> None:
    """A stage-2 checkpoint of `config`'s models with random weights, saved with the config, as
    `lip-jax train` leaves WORKDIR/params."""
    from lip_jax.models.dfvqgan import param_template as vq_template
    from lip_jax.models.mps2s import param_template as mps_template
    from lip_jax.weights.store import save_params

    save_params(directory, {"vqgan": random_params(vq_template(config.vqgan), 1),
                            "mps": random_params(mps_template(config.mps), 2)}, config=config)
