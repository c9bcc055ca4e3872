"""The range of every integer argument, one table for the command line, the configs and the Python
API: a value is checked before any work, so an integer a library cannot take (a seed past 32 bits,
which `jax.random.key` silently wraps and C converters refuse with OverflowError), or a count the
machine cannot hold (a million worker processes, a batch larger than memory), is one line naming
the argument and its range (RangeError, a ValueError; exit 2 on the command line).

Fields are found by their last name (`data.seed`, `eval.seed` and `--seed` share "seed"); an
integer with no entry must fit int32, the type JAX gives a Python int. Resource counts (workers,
batches, candidates) are bounded by this machine's CPUs and memory, read when checked.
"""

from __future__ import annotations

import os

INT32 = 2**31 - 1
UINT32 = 2**32 - 1


class RangeError(ValueError):
    """An integer argument outside the range it takes."""


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_bytes() -> int:
    """Physical memory (or the cgroup's limit when lower): what one host can hold."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 << 30
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def _workers(config) -> int:
    # Worker processes past one per CPU only contend; 2 (the recipes' value) always fits.
    return max(2, cpus())


def _per_memory(config) -> int:
    """Examples (or candidates) of the model's resolution that fit in half of this host's memory,
    at ~32 float32 images each: the input, its masked copy and mask, the workers' buffers, the
    decoded candidates and the activations' host copies."""
    side = _side(config)
    return max(1, memory_bytes() // 2 // (32 * side * side * 3 * 4))


def _per_memory_all_hosts(config) -> int:
    """A global batch: each of the run's hosts holds its share."""
    return _per_memory(config) * _hosts(config)


def _hosts(config) -> int:
    dist = _get(config, "distributed")
    if dist is None or not _get(dist, "enabled"):
        return 1
    n = _get(dist, "num_processes")
    return n if _is_int(n) and n > 0 else 1 << 16  # read from the pod's environment: not known yet


def _side(config) -> int:
    if config is None:  # a flag checked before the config is read: the loosest bound (1 px); the
        return 1        # command checks it again against its model's resolution
    for section, key in (("data", "image_size"), ("vqgan", "resolution"), ("mps", "img_size")):
        node = _get(config, section)
        value = _get(node, key) if node is not None else None
        if isinstance(value, int) and 1 <= value <= SIDE:
            return value
    return 256


SIDE = 1 << 14  # pixels: an image side; 16384^2 x 3 float32 is 3 GiB, past any recipe

# name -> (low, high, why); high may be a function of the whole config (a resource bound).
RANGES: dict = {
    "seed": (0, UINT32, "a 32-bit seed: jax.random.key keeps 32 bits, numpy and grain take uint32"),
    "port": (1, 65535, "a TCP port"),
    # steps and intervals: the step counter is int32 on the device
    "total_steps": (1, INT32, "steps"), "save_every": (1, INT32, "steps"), "log_every": (1, INT32, "steps"),
    "sample_every": (0, INT32, "steps, 0 = never"), "disc_start": (0, INT32, "a step"),
    "keep": (1, 1 << 16, "checkpoints kept"), "max_skipped_steps": (1, INT32, "steps"),
    "grad_accum": (1, 1 << 16, "micro-batches per update"),
    # resources of this machine
    "workers": (0, _workers, "worker processes per data shard, at most one per CPU"),
    "shards": (0, 1 << 16, "data shards, 0 = one per process"),
    "worker_buffer_size": (1, 64, "batches buffered per worker"),
    "batch_size": (1, _per_memory_all_hosts, "examples held in memory at once"),
    "metric_batch_size": (1, _per_memory, "images held in memory at once"),
    "sample_K": (1, _per_memory, "candidates held in memory at once"),
    "num_samples": (1, _per_memory, "candidates held in memory at once"),
    "best_n": (1, _per_memory, "candidates kept"),
    "num_images": (1, _per_memory, "images held in memory at once"),
    "images": (1, _per_memory, "images held in memory at once"),
    "grid_images": (1, 1 << 10, "images in one grid"),
    "max_examples": (0, INT32, "examples, 0 = all"), "num_examples": (1, INT32, "examples"),
    "top_k": (1, INT32, "tokens; more than the codebook keeps all"),
    # sizes: a side, a width, a count of layers or heads (memory grows with their products)
    "image_size": (1, SIDE, "pixels"), "resolution": (1, SIDE, "pixels"), "img_size": (1, SIDE, "pixels"),
    "vae_patch_size": (1, SIDE, "pixels"), "vit_patch_size": (1, SIDE, "pixels"),
    "object_hole": (0, SIDE, "pixels, 0 = no hole"), "max_objects": (1, 9, "objects, one per cell of 3x3"),
    "kernel_size": (1, 255, "tokens"), "text_len": (1, 1 << 16, "tokens"),
    "dim": (1, 1 << 16, "a width"), "dim_head": (1, 1 << 16, "a width"), "text_width": (1, 1 << 16, "a width"),
    "ch": (1, 1 << 16, "channels"), "z_channels": (1, 1 << 16, "channels"), "e_dim": (1, 1 << 16, "channels"),
    "vae_emb_dim": (1, 1 << 16, "channels"), "in_channels": (1, 64, "channels"), "out_ch": (1, 64, "channels"),
    "ch_mult": (1, 1 << 10, "channel multipliers"), "attn_resolutions": (1, SIDE, "pixels"),
    "ff_mult": (1, 1 << 10, "a width multiplier"), "disc_ndf": (1, 1 << 16, "channels"),
    "heads": (1, 1 << 12, "heads"), "text_heads": (1, 1 << 12, "heads"),
    "dec_depth": (0, 1 << 12, "layers"), "enc_depth": (0, 1 << 12, "layers"), "text_layers": (0, 1 << 12, "layers"),
    "num_res_blocks": (1, 1 << 12, "blocks"), "disc_layers": (1, 64, "layers"),
    "n_e": (1, 1 << 24, "codes"), "vqvae_vocab_size": (1, 1 << 24, "codes"),
    "text_vocab_size": (1, 1 << 24, "tokens"),
    # several hosts and devices: -1 is "unset" (read from the environment) / "the rest"
    "num_processes": (0, 1 << 16, "processes, 0 = from the environment"),
    "process_id": (-1, 1 << 16, "a process index, -1 = from the environment"),
    "data": (-1, 1 << 16, "devices, -1 = the rest"), "fsdp": (-1, 1 << 16, "devices, -1 = the rest"),
    "tensor": (-1, 1 << 16, "devices, -1 = the rest"),
    "stage": (1, 2, "stage 1 or 2"),
    "runs": (1, 1 << 10, "repetitions"),  # tools/fault_drill.py
}
DEFAULT = (-(2**31), INT32, "an int32")


def bounds(name: str, config=None) -> tuple[int, int, str]:
    """(low, high, why) of the integer argument `name` (its last dotted part decides)."""
    low, high, why = RANGES.get(name.rsplit(".", 1)[-1].lstrip("-").replace("-", "_"), DEFAULT)
    return low, (high(config) if callable(high) else high), why


def check(name: str, value, config=None, what: str | None = None) -> int:
    """`value` as an int when it is an integer in `name`'s range (resource bounds read from
    `config`: its resolution and hosts), else RangeError "NAME=VALUE: out of range [LOW, HIGH]
    (WHY)", named `what` when given (a flag, a dotted field)."""
    lo, hi, why = bounds(name, config)
    name = what or name
    if isinstance(value, bool) or not _is_int(value):
        raise RangeError(f"{name}={value!r}: not an integer ({why})")
    if not lo <= int(value) <= hi:
        raise RangeError(f"{name}={value}: out of range [{lo}, {hi}] ({why})")
    return int(value)


def check_config(config, prefix: str = "config.") -> None:
    """Every integer field of a config (ConfigDict or dict, nested sections and tuples of ints
    included) against its range; one RangeError for the first field out of range."""
    _walk(config, config, prefix)
    for section, name in _sections(config, prefix):
        _check_products(section, name)


def _walk(node, root, prefix: str) -> None:
    for key in list(node.keys()):
        value = node[key]
        name = prefix + str(key)
        if hasattr(value, "keys"):
            # a demo config holds whole training configs (stage1, stage2): each is its own root
            _walk(value, value if "train" in value and "data" in value else root, name + ".")
        elif isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                if _is_int(v) and not isinstance(v, bool):
                    check(name, v, root, what=f"{name}[{i}]")
        elif _is_int(value) and not isinstance(value, bool):
            check(name, value, root)
        elif isinstance(value, str) and key == "coordinator_address" and value:
            port = value.rpartition(":")[2]  # "host:port", the port handed to gRPC
            if not port.isdigit():
                raise RangeError(f"{name}={value!r}: expected HOST:PORT")
            check("port", int(port), what=f"{name} port")


def _sections(config, prefix: str):
    yield config, prefix
    for key in config.keys():
        if hasattr(config[key], "keys") and "train" in config[key] and "data" in config[key]:
            yield config[key], f"{prefix}{key}."


def _check_products(config, prefix: str) -> None:
    """Counts held in memory together: a batch times its workers' buffers, a batch of images
    times their candidates."""
    data, ev = _get(config, "data"), _get(config, "eval")
    limit = _per_memory(config) * _hosts(config)
    if data is not None and _is_int(_get(data, "batch_size")) and _is_int(_get(data, "workers")):
        held = data["batch_size"] * (2 * max(1, data["workers"]) + 2)  # 2 buffered per worker, 2 in flight
        if held > limit:
            raise RangeError(f"{prefix}data.batch_size={data['batch_size']} with data.workers={data['workers']}: "
                             f"{held} examples in memory at once, at most {limit} fit in memory at "
                             f"{_side(config)} px")
    if ev is not None and _is_int(_get(ev, "batch_size")) and _is_int(_get(ev, "sample_K")):
        held = ev["batch_size"] * ev["sample_K"]
        if held > limit:
            raise RangeError(f"{prefix}eval.batch_size={ev['batch_size']} x eval.sample_K={ev['sample_K']}: "
                             f"{held} candidates in memory at once, at most {limit} fit in memory at "
                             f"{_side(config)} px")


def _get(node, key):
    try:
        return node[key] if hasattr(node, "keys") and key in node else None
    except (KeyError, TypeError):
        return None


def _is_int(v) -> bool:
    return isinstance(v, int) or type(v).__name__ in ("int8", "int16", "int32", "int64", "uint8", "uint16",
                                                      "uint32", "uint64")
