"""Parameter shardings of the compiled train steps follow the rule table (lip_jax.sharding).

The tiny stage-1 and stage-2 steps are compiled, as the trainer jits them, on 4 simulated CPU
devices under data=4, fsdp=4 and fsdp=2 x tensor=2 (one subprocess: the device count is fixed when
JAX starts). For every parameter the expected spec is derived here from RULES alone: a dimension
is split over its rule's mesh axes unless they are trivial, already used by an earlier dimension,
or do not divide it, and each such drop must be reported as a note. No parameter may be silently
replicated, and Adam's moments must carry their parameter's sharding.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from lip_jax.sharding import MESH_AXES, RULES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHES = ({"data": 4}, {"fsdp": 4}, {"fsdp": 2, "tensor": 2})

CHILD = r"""
import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "tools"))
import flax.linen as nn, jax, jax.numpy as jnp
import plan
from lip_jax.perf import hlo_cost
from lip_jax.config import load_config
from lip_jax.weights.dfvqgan import param_template
from lip_jax import sharding
from lip_jax.train import stage1, stage2

def specs(tree):
    return [[jax.tree_util.keystr(p), list(s.spec)] for p, s in jax.tree_util.tree_leaves_with_path(tree)]

def moments(opt):  # Adam's mu / nu trees, wherever optax nests them
    found = []
    def walk(x):
        if hasattr(x, "mu") and hasattr(x, "nu"):
            found.extend([x.mu, x.nu])
        elif isinstance(x, (tuple, list)):
            for y in x:
                walk(y)
    walk(opt)
    return found

out = []
stage = int(sys.argv[3])
for path in ["configs/test_stage%d.py" % stage]:
    c = load_config(os.path.join(sys.argv[1], path))
    if stage == 1:
        c.train.perceptual_weight = 0.0  # LPIPS holds no trained parameter
    else:
        c.mps.dec_depth = 1  # every parameter kind (self + cross attention, GEGLU), one layer: faster
    init = (lambda c: lambda r: stage1.init_boxed_state(c, r)) if stage == 1 else (lambda c: lambda r: stage2.init_boxed_state(c, r))
    boxed = jax.eval_shape(init(c), jax.random.key(0))  # the trainer's abstract_state, traced once
    state = nn.unbox(boxed)
    vq = param_template(c.vqgan) if stage == 2 else None
    for shape in json.loads(sys.argv[2]):
        mesh = sharding.make_mesh(shape)
        with jax.set_mesh(mesh):
            sh, notes = sharding.param_shardings(boxed, mesh)
            rep = sharding.replicated(mesh)
            if stage == 1:
                n, r = c.data.batch_size, c.vqgan.resolution
                batch = dict(image=jax.ShapeDtypeStruct((n, r, r, 3), jnp.float32),
                             mask=jax.ShapeDtypeStruct((n, r, r), jnp.bool_),
                             decoder_none=jax.ShapeDtypeStruct((n,), jnp.bool_))
                # Before disc_start (cheaper to compile); the discriminator's parameters and
                # moments still go in and out of the step with their shardings.
                step, extra = stage1.make_train_step(c, lambda x, y, k: jnp.zeros(x.shape[0]), False), ()
            else:
                n, m = c.data.batch_size, stage2.mps_config(c)
                r = m.img_size
                batch = dict(image=jax.ShapeDtypeStruct((n, r, r, 3), jnp.float32),
                             mask=jax.ShapeDtypeStruct((n, r, r), jnp.bool_),
                             masked_image=jax.ShapeDtypeStruct((n, r, r, 3), jnp.float32),
                             text_ids=jax.ShapeDtypeStruct((n, m.text_len), jnp.int32))
                step, extra = stage2.make_train_step(c), (vq,)
            bsh = {k: sharding.batch_sharding(mesh, len(v.shape)) for k, v in batch.items()}
            compiled = jax.jit(step, donate_argnums=0, in_shardings=(sh, *(rep,) * len(extra), bsh),
                               out_shardings=(sh, rep)).lower(state, *extra, batch).compile(
                                   compiler_options=plan.COMPILER_OPTIONS)
            cin, cout = compiled.input_shardings[0][0], compiled.output_shardings[0]
            colls = hlo_cost.parse_hlo(compiled.as_text())["collectives_by_op"]
            trees = [("params", boxed.params, cin.params, cout.params, moments(cin.opt))]
            if stage == 1:
                trees.append(("disc_params", boxed.disc_params, cin.disc_params, cout.disc_params, moments(cin.disc_opt)))
            for name, b, i, o, mom in trees:
                leaves = jax.tree_util.tree_leaves_with_path(b, is_leaf=lambda x: isinstance(x, nn.Partitioned))
                out.append(dict(stage=stage, mesh=shape, tree=name, notes=notes,
                                params=[[jax.tree_util.keystr(p), list(x.value.shape) if isinstance(x, nn.Partitioned) else list(x.shape),
                                         list(x.names) if isinstance(x, nn.Partitioned) else None] for p, x in leaves],
                                compiled_in=specs(i), compiled_out=specs(o), moments=[specs(t) for t in mom],
                                collectives=colls))
print("RESULT " + json.dumps(out))
"""


def _axes(name):
    for logical, target in RULES:
        if logical == name:
            return () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    raise AssertionError(f"logical axis {name!r} has no rule")


def expected_spec(shape, names, mesh):
    """(spec, dims whose rule was dropped) straight from the rule table."""
    sizes = {a: mesh.get(a, 1) for a in MESH_AXES}
    used, spec, dropped = set(), [], []
    for dim, name in zip(shape, names):
        axes = tuple(a for a in _axes(name) if sizes[a] > 1) if name is not None else ()
        if not axes:
            spec.append(None)
        elif used & set(axes) or dim % math.prod(sizes[a] for a in axes):
            spec.append(None)
            dropped.append(name)
        else:
            used |= set(axes)
            spec.append(axes[0] if len(axes) == 1 else list(axes))
    return spec, dropped


def _norm(spec, ndim):
    spec = [s[0] if isinstance(s, list) and len(s) == 1 else s for s in spec]
    return spec + [None] * (ndim - len(spec))


@pytest.fixture(scope="module")
def compiled_steps():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, REPO, json.dumps(MESHES), str(stage)], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for stage in (1, 2)]
    results = []
    for proc in procs:  # the two stages compile side by side (2 cores)
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        line = [l for l in out.splitlines() if l.startswith("RESULT ")][-1]
        results += json.loads(line[len("RESULT "):])
    return results


def test_every_stage_and_mesh_was_compiled(compiled_steps):
    seen = {(r["stage"], json.dumps(r["mesh"], sort_keys=True), r["tree"]) for r in compiled_steps}
    assert len(seen) == 3 * 3  # stage-1 autoencoder + discriminator, stage-2 MP-S2S; 3 meshes each


def test_parameter_shardings_follow_the_rule_table(compiled_steps):
    for r in compiled_steps:
        where = f"stage {r['stage']} {r['tree']} mesh {r['mesh']}"
        cin = {p: s for p, s in r["compiled_in"]}
        cout = {p: s for p, s in r["compiled_out"]}
        split_bytes = total_bytes = 0
        for path, shape, names in r["params"]:
            assert names is not None, f"{where}: {path} has no logical axes (it would be silently replicated)"
            want, dropped = expected_spec(shape, names, r["mesh"])
            for got in (cin[path], cout[path]):
                assert _norm(got, len(shape)) == _norm(want, len(shape)), f"{where}: {path} {shape} {names}: {got} != {want}"
            for name in dropped:  # a rule that could not apply is reported, never silent
                assert any(n.startswith(f".{r['tree']}{path}:") and f" {name}=" in n for n in r["notes"]), f"{where}: {path} {name} dropped silently"
            nbytes = math.prod(shape)
            total_bytes += nbytes
            split_bytes += nbytes * any(s is not None for s in want)
        if r["mesh"].get("fsdp", 1) > 1:  # FSDP shards nearly all parameter memory
            assert split_bytes > 0.9 * total_bytes, f"{where}: only {split_bytes / total_bytes:.0%} of parameters split"


def test_optimizer_moments_share_the_parameter_shardings(compiled_steps):
    for r in compiled_steps:
        params = {p: _norm(s, 8) for p, s in r["compiled_in"]}
        assert len(r["moments"]) == 2, r["tree"]  # Adam's mu and nu
        for moment in r["moments"]:
            got = {p: _norm(s, 8) for p, s in moment}
            assert got == params, f"stage {r['stage']} {r['tree']} mesh {r['mesh']}"


def test_tensor_split_feed_forward_moves_no_activations(compiled_steps):
    """With `mlp` over `tensor`, GEGLU's value and gate halves must sit on the same shard: a fused
    [dim, 2 * hidden] kernel split contiguously moved every layer's activations (collective-permute
    forward, all-to-all backward; 92 GB per device and step at the official size on 8 devices)."""
    rows = [r for r in compiled_steps if r["stage"] == 2 and r["mesh"].get("tensor", 1) > 1 and r["tree"] == "params"]
    assert rows
    for r in rows:
        assert any(c["kind"] == "all-reduce" for c in r["collectives"])  # the Megatron row-split sums
        moved = [c for c in r["collectives"]
                 if c["kind"] in ("collective-permute", "all-to-all") and "/ff/" in "/" + c["op"]]
        assert not moved, moved
