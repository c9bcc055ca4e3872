"""The loaders of every checkpoint this project accepts: orbax directories (ours, from `lip-jax
train` or `lip-jax convert`; a training workdir stands for its `params/`) and the official PyTorch
files. Each loader returns one shape; errors name the file.

  config_for      the config to run a checkpoint with: the one saved with it, or a config file
                  that must agree with it on every model field

  load_lip        NUWA-LIP: {"mps", "vqgan"[, "clip": (params, ClipConfig)]}
  load_vqgan      DF-VQGAN params (a stage-1 output, a stage-2 output's DF-VQGAN, or a .pth)
  load_clip_any   (params, ClipConfig)
  load_lpips_any  LPIPS params
  load_inception_any  {"params", "batch_stats"}

`fingerprint(path)` is a checksum of a checkpoint's content (what an evaluation's output depends on,
not only where the weights lie).
"""

from __future__ import annotations

import functools
import json
import zlib

import jax
import numpy as np

from lip_jax.config import UsageError
from lip_jax.paths import PathLike, path as as_path
from lip_jax.weights.errors import CheckpointError, ConversionError
from lip_jax.weights.store import load_params, load_part, orbax_template, replicate, resolve


def to_local(tree):
    """Arrays restored replicated over every process -> numpy (this process's copy)."""
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            a = a.addressable_data(0)
        return np.asarray(a)
    return jax.tree.map(one, tree)


def load_orbax(path: PathLike, template=None):
    """An orbax tree as numpy; `template` (shapes) is checked strictly, else the stored shapes are
    used, which also works on several processes (orbax needs a target there)."""
    return to_local(load_params(path, orbax_template(path) if template is None else template))


def clip_config_of(params, preset=None):
    """ClipConfig of Flax CLIP params: `preset` if given, else OpenAI's rule (heads = width / 64)."""
    from lip_jax.weights import clip as conv_clip
    from lip_jax.weights import torch_io
    from lip_jax.models.clip import ClipConfig

    if preset:
        return ClipConfig.from_any(preset)
    shapes = torch_io.expected_torch_shapes(params, (), conv_clip.KEY_RULES)
    return conv_clip.infer_config({k: jax.ShapeDtypeStruct(s, np.float32) for k, (_, s) in shapes.items()})


@functools.lru_cache(maxsize=4)
def _templates(mps_json: str, vq_json: str) -> tuple:
    """Parameter shapes of both models (tracing DF-VQGAN's init costs seconds: once per process)."""
    from lip_jax.models import dfvqgan, mps2s

    return (("mps", mps2s.param_template(json.loads(mps_json))),
            ("vqgan", dfvqgan.param_template(json.loads(vq_json))))


def _as_json(cfg) -> str:
    import dataclasses

    from lip_jax.models.mps2s import MPSConfig

    if isinstance(cfg, MPSConfig):
        cfg = dataclasses.asdict(cfg)
    elif hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    return json.dumps(cfg, sort_keys=True, default=list)


def load_lip(path: PathLike, mps_cfg, vq_cfg) -> dict:
    """NUWA-LIP weights -> {"mps", "vqgan"[, "clip": (params, ClipConfig)]} as numpy.

    `path`: a stage-2 workdir or its `params/`, an orbax {mps, vqgan[, clip]} from `lip-jax convert`,
    or the official `.pth` (its `clip_sim` reranker becomes "clip")."""
    from lip_jax.weights.errors import ConversionError

    if not as_path(path).exists():
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    if as_path(path).is_dir():
        stored = orbax_template(path)
        if not {"mps", "vqgan"} <= set(stored):
            raise CheckpointError(f"{path}: expected NUWA-LIP weights (a stage-2 workdir, or an orbax tree with "
                                  f"'mps' and 'vqgan'), got {sorted(stored)}")
        template = dict(_templates(_as_json(mps_cfg), _as_json(vq_cfg)))
        if "clip" in stored:
            template["clip"] = stored["clip"]
        tree = load_orbax(path, template)
        out = {"mps": tree["mps"], "vqgan": tree["vqgan"]}
        if "clip" in tree:
            out["clip"] = (tree["clip"], clip_config_of(tree["clip"]))
        return out
    from lip_jax.weights import torch_io
    from lip_jax.weights.mps2s import lip_from_torch

    try:
        tree = lip_from_torch(torch_io.load_torch_checkpoint(path), mps_cfg, vq_cfg)
        out = {"mps": tree["mps"], "vqgan": tree["vqgan"]}
        clip_sim = torch_io.subtree(tree.get("clip_sim", {}), "model")
        if clip_sim:
            from lip_jax.weights.clip import clip_from_openai, infer_config

            cfg = infer_config(clip_sim)
            out["clip"] = (clip_from_openai(clip_sim, cfg, what=f"{path} clip_sim"), cfg)
    except ConversionError as e:
        raise ConversionError(str(e) if str(path) in str(e) else f"{path}: {e}") from e
    return out


def _placed(tree, on_host: bool):
    """Loaders return numpy (`on_host`, for inference, which places the weights on its own mesh)
    or arrays replicated over every device (training's state and step inputs)."""
    if on_host:
        return to_local(tree)
    return tree if all(isinstance(a, jax.Array) for a in jax.tree.leaves(tree)) else replicate(tree)


def load_vqgan(path: PathLike, vq_cfg, on_host: bool = True):
    """DF-VQGAN params from a stage-1 workdir / params, a stage-2 output (its DF-VQGAN), an orbax
    directory from `lip-jax convert`, or the official `.pth`."""
    from lip_jax.models.dfvqgan import param_template

    if as_path(path).is_file():
        from lip_jax.weights import torch_io
        from lip_jax.weights.dfvqgan import dfvqgan_from_torch

        return _placed(dfvqgan_from_torch(torch_io.load_torch_checkpoint(path), vq_cfg, what=path), on_host)
    return _placed(load_part(path, "vqgan", param_template(vq_cfg)), on_host)


def load_vqgan_with_discriminator(path: PathLike, cfg):
    """(DF-VQGAN params, discriminator tree or None) from an orbax directory, strict against `cfg`.
    The DF-VQGAN alone is read by `load_vqgan` (stage 2, reconstruct)."""
    from lip_jax.models.dfvqgan import param_template
    from lip_jax.weights import discriminator as conv_disc
    from lip_jax.weights.dfvqgan import DISCRIMINATOR

    stored = orbax_template(path)
    template = dict(param_template(cfg))
    disc = stored.get(DISCRIMINATOR) if hasattr(stored, 'get') else None
    if disc is not None:
        try:
            size = conv_disc.size_of_tree(disc)
        except ConversionError as e:
            raise CheckpointError(f"{path}: unreadable '{DISCRIMINATOR}' entry ({e})") from e
        template[DISCRIMINATOR] = conv_disc.variables_template(*size)
    tree = dict(load_params(path, template))
    disc = tree.pop(DISCRIMINATOR, None)
    return tree, disc


def load_mps(path: PathLike, mps_cfg, on_host: bool = True):
    """MP-S2S params (`train.init_ckpt`) from a stage-2 workdir / params or an orbax directory from
    `lip-jax convert --only mps`."""
    from lip_jax.models.mps2s import param_template

    return _placed(load_part(path, "mps", param_template(mps_cfg)), on_host)


def load_clip_any(path: PathLike, preset=None):
    """(params, ClipConfig) from an OpenAI file, an HF directory or hub name, or an orbax directory."""
    from lip_jax.weights.clip import load_clip
    from lip_jax.weights.errors import ConversionError

    try:
        if as_path(path).is_dir() and not (as_path(path) / "config.json").is_file():
            params = load_orbax(path)
            return params, clip_config_of(params, preset)
        return load_clip(path, preset)
    except ConversionError:
        raise
    except ValueError as e:  # unknown preset, zero heads inferred for a tiny width
        raise UsageError(f"{path}: {e}") from e


def load_lpips_any(spec: str, on_host: bool = True):
    """LPIPS params: an orbax directory, one merged `.pth`, or `VGG16.pth,HEADS.pth`."""
    from lip_jax.models.lpips import param_template
    from lip_jax.weights.lpips import load_lpips_params

    if as_path(spec).is_dir():
        return _placed(load_params(spec, param_template()), on_host)
    vgg, _, heads = spec.partition(",")
    return _placed(load_lpips_params(vgg, heads or None), on_host)


def load_inception_any(path: PathLike):
    """pytorch-fid Inception: `.pth` or an orbax {params, batch_stats} directory."""
    from lip_jax.weights.inception import load_inception_variables

    if as_path(path).is_dir():
        tree = load_orbax(path)
        if set(tree) != {"params", "batch_stats"}:
            raise CheckpointError(f"{path}: expected an orbax tree {{params, batch_stats}}, got {sorted(tree)}")
        return tree
    return load_inception_variables(path)


_CHUNK = 8 << 20


def fingerprint(path: PathLike) -> str:
    """A checksum of a checkpoint's content: CRC-32 streamed in 8 MiB chunks over a file's bytes, or
    over every file of a directory (an orbax tree; a training workdir stands for its `params/`), each
    as its relative name, size and bytes, in sorted order. "crc32:XXXXXXXX:BYTES"; the same weights
    copied elsewhere give the same value, other weights at the same path another one."""
    p = as_path(path)
    if not p.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    root = resolve(p) if p.is_dir() else p
    is_dir = root.is_dir()
    crc, total = 0, 0
    try:
        files = sorted(_files(root), key=lambda f: f.relative_to(root).as_posix()) if is_dir else [root]
        for f in files:
            if is_dir:
                rel = f.relative_to(root).as_posix()
                crc = zlib.crc32(f"{rel}\0{f.stat().length}\0".encode("utf-8", "surrogateescape"), crc)
            with f.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    crc = zlib.crc32(chunk, crc)
                    total += len(chunk)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    return f"crc32:{crc:08x}:{total}"


def _files(root):
    """Every file under `root`, local or in an object store (epath's walk yields gs:// folders
    without their scheme, and its rglob refuses gs://)."""
    for child in root.iterdir():
        if child.is_dir():
            yield from _files(child)
        else:
            yield child


# Fields that change how a model computes, not what its weights mean: a config may set them
# differently from the one the weights were saved with (e.g. bfloat16 inference of float32 training).
COMPUTE_ONLY = frozenset({"dtype", "remat", "scan_layers", "attention", "attn_dropout", "ff_dropout"})


def _model_fields(section: str, cfg) -> dict:
    """A model section with its defaults filled in, so that two spellings of one model compare equal."""
    import dataclasses

    from lip_jax.models import dfvqgan
    from lip_jax.models.mps2s import MPSConfig

    if section == "mps":
        fields = dataclasses.asdict(MPSConfig.from_any(dict(cfg)))
    else:
        model = dfvqgan.from_config(cfg)
        fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in ("parent", "name")}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items() if k not in COMPUTE_ONLY}


def model_differences(config, saved) -> list[str]:
    """`section.field: value here, value saved` for every model field (vqgan, mps) where `config`
    and the saved config disagree."""
    out = []
    for section in ("vqgan", "mps"):
        if section in config and section in saved:
            try:
                mine, theirs = _model_fields(section, config[section]), _model_fields(section, saved[section])
            except (TypeError, ValueError, KeyError) as e:
                return [f"{section}: {e}"]
            out += [f"{section}.{k} is {mine.get(k)!r}, the checkpoint's {theirs.get(k)!r}"
                    for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
    return out


def checkpoint_config(path: PathLike):
    """The config saved with an orbax checkpoint as a ConfigDict, or None (a PyTorch file, or an
    orbax directory that records none)."""
    from lip_jax.config import from_record
    from lip_jax.weights.store import saved_config

    p = as_path(path)
    if not p.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    if not p.is_dir():
        return None
    record = saved_config(p)
    return None if record is None else from_record(record)


def config_for(ckpt: PathLike, spec=None, overrides=(), prepare=None):
    """The config to run `ckpt` with: `spec` if given (a config file, or a ConfigDict), else the
    one saved with the checkpoint; then `prepare(config)` (a command adding sections it defaults) and the
    `--config.k=v` overrides. Where the checkpoint records a config, the result must agree with it
    on every model field: a config for another model is one line, never a shape error later."""
    from lip_jax.config import apply_overrides, load_config

    # A missing checkpoint beside a config file is reported where the weights are read, after
    # the command has checked the rest of its input.
    saved = checkpoint_config(ckpt) if spec is None or as_path(ckpt).exists() else None
    if spec is None and saved is None:
        raise UsageError(f"{ckpt}: records no config (an official .pth, or weights converted without one): "
                         f"pass --config")
    if isinstance(spec, str):
        config = load_config(spec)
    else:
        config = (saved if spec is None else spec).copy_and_resolve_references()
    if prepare is not None:
        prepare(config)
    apply_overrides(config, overrides)
    if saved is not None:
        diffs = model_differences(config, saved)
        if diffs:
            source = spec if isinstance(spec, str) else "the config" if spec is not None else "the --config.* overrides"
            raise UsageError(f"{source}: does not match the config saved with {ckpt} ({len(diffs)} model "
                             f"field(s): {'; '.join(diffs[:3])})")
    return config
