"""The per-host training/evaluation loader.

Grain reads this host's shard of a source (`process_index` of
`process_count`); its worker processes decode, augment, draw a mask,
tokenise and stack, and this process only cuts the stream into numpy
batches:

    image         float32 [B, H, W, 3] in [-1, 1]   ground truth after augmentation
    mask          bool    [B, H, W]                  True = hole
    token_mask    bool    [B, H/p, W/p]              mask max-pooled over p x p (p = vae_patch_size)
    masked_image  float32 [B, H, W, 3]               image with the hole set to 0 (mid grey)
    text_ids      int32   [B, L]
    decoder_none  bool    [B]                        stage-1 "decoder without skips" flag

ready for `jax.make_array_from_process_local_data`. Randomness (order,
augmentation, mask) comes from grain's per-record generator, a function of
(seed, position in the stream). Unreadable examples are skipped with a
warning and counted in `iterator.stats`; the iterator state (`get_state` /
`set_state`, JSON-serialisable) restores the exact stream.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import grain
import numpy as np

from lip_jax import ranges
from lip_jax.data import masks as masks_lib
from lip_jax.data.augment import STAGE2_AUGMENT, Augment, augment, center_resize
from lip_jax.data.errors import DataError
from lip_jax.images.resize import mask_nearest
from lip_jax.models.tokenizer import ByteTokenizer

log = logging.getLogger(__name__)

# A source whose examples fail this many times in a row is broken, not noisy.
MAX_ERRORS_IN_A_ROW = 1000

Tokenizer = Callable[[list], np.ndarray]  # texts -> int32 [len(texts), context_length]


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What the loader produces.

    mask: a family of `lip_jax.data.masks` ("stage1", "stage2", "brush", ...),
      a callable (rng, H, W) -> bool mask (e.g. `masks.FileMasks`), or
      "source" to use the example's own mask (evaluation sets).
    augment: training augmentation; None = centred square crop resized to
      image_size, and a source's `masked_image` is kept (evaluation).
    training: pick a random caption of multi-caption examples (else the first).
    with_ids: add "id" (str [B]) to each batch.
    """

    image_size: int = 256
    batch_size: int = 8
    mask: str | Callable = "stage2"
    augment: Augment | None = STAGE2_AUGMENT
    vae_patch_size: int = 8
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None
    drop_remainder: bool = True
    worker_count: int = 2
    worker_buffer_size: int = 2
    training: bool = True
    with_ids: bool = False

    def __post_init__(self):
        # the project's integer rule (lip_jax.ranges), for callers that skip the config's check
        fields = {"image_size": self.image_size, "vae_patch_size": self.vae_patch_size, "seed": self.seed,
                  "workers": self.worker_count, "worker_buffer_size": self.worker_buffer_size,
                  "batch_size": self.batch_size}
        context = {"data": {"image_size": self.image_size}}  # the batch's bound follows the image side
        for name, value in fields.items():
            ranges.check(name, value, context, what=f"PipelineConfig.{name}")


@dataclasses.dataclass
class LoaderStats:
    """Counts since the start of the stream (restored with the iterator state)."""

    examples: int = 0
    batches: int = 0
    skipped: int = 0
    recent_errors: list = dataclasses.field(default_factory=list)  # last few messages

    MAX_ERRORS = 20

    def record_error(self, message: str) -> None:
        self.skipped += 1
        self.recent_errors = (self.recent_errors + [message])[-self.MAX_ERRORS:]


class _HostShard:
    """This host's contiguous share of `source` (the first len % count hosts get
    one more), with read errors turned into error records so that one bad file
    is skipped instead of stopping the run.

    Sharding here rather than with grain's ShardOptions: grain 0.2.18 drops an
    example when the shards are uneven and drop_remainder=False.
    """

    def __init__(self, source, index: int, count: int):
        size, extra = divmod(len(source), count)
        self.start = index * size + min(index, extra)
        self.stop = self.start + size + (index < extra)
        self.source = source

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i):
        try:
            return self.source[self.start + i]
        except DataError as e:
            return {"error": str(e)}

    def __repr__(self) -> str:  # grain records it in the iterator state
        return f"HostShard({self.source!r}, {self.start}:{self.stop})"


class _Prepare(grain.transforms.RandomMap):
    """Per-example work done in the workers: geometry, colour, mask, tokens."""

    def __init__(self, config: PipelineConfig, tokenizer):
        self.config, self.tokenizer = config, tokenizer

    def random_map(self, example, rng):
        if "error" in example:
            return example
        try:
            return self._prepare(example, rng)
        except DataError as e:
            return {"error": f"{example.get('id', '?')}: {e}"}

    def _prepare(self, example, rng):
        cfg, size = self.config, self.config.image_size
        image, mask = example["image"], example.get("mask")
        base = None
        if cfg.augment is not None:
            image, mask = augment(image, mask, rng, size, cfg.augment)
        else:
            image = center_resize(image, size)
            if mask is not None:
                mask = center_resize(np.asarray(mask, bool), size, mask_nearest)
            if "masked_image" in example:
                base = center_resize(example["masked_image"], size)
        decoder_none = False
        if cfg.mask == "source":
            if mask is None:
                raise DataError("mask='source' but the example has no mask")
        else:
            mask, decoder_none = masks_lib.sample(cfg.mask, rng, size, size)
        captions = example.get("captions") or (example["text"],)
        text = captions[int(rng.integers(len(captions)))] if cfg.training else captions[0]
        return {"image": image, "mask": mask, "masked_base": base, "decoder_none": decoder_none,
                "text_ids": np.asarray(self.tokenizer([text])[0], np.int32),
                "id": example["id"]}


def _normalise(images: np.ndarray) -> np.ndarray:
    # ToTensor + Normalize([0.5]*3, [0.5]*3): [0, 255] -> [-1, 1].
    out = np.empty(images.shape, np.float32)
    np.multiply(images, np.float32(1 / 127.5), out=out, casting="unsafe")
    out -= np.float32(1)
    return out


class _Collate:
    """Grain batch function, run in the workers: stacks and normalises the
    good examples of a group of `batch_size` and passes the error messages of
    the bad ones along, so the main process can count them and refill the batch.
    Returns {"errors": [str], "batch": dict of arrays (absent if none was good)}.
    """

    def __init__(self, vae_patch_size: int):
        self.vae_patch_size = vae_patch_size

    def __call__(self, records: list) -> dict:
        good = [r for r in records if "error" not in r]
        out = {"errors": [r["error"] for r in records if "error" in r]}
        if not good:
            return out
        mask = np.stack([r["mask"] for r in good])
        image = _normalise(np.stack([r["image"] for r in good]))
        if any(r["masked_base"] is not None for r in good):
            base = _normalise(np.stack([r["image"] if r["masked_base"] is None
                                        else r["masked_base"] for r in good]))
        else:
            base = image
        # The official code multiplies the normalised image by (mask == 0), so
        # the hole reads 0, i.e. mid grey (config/mps4cc/__init__.py, _get_vmlm).
        # A full-size 0/1 factor is much faster than a broadcast np.where.
        keep = np.stack([~mask] * 3, axis=-1).view(np.uint8)
        out["batch"] = {
            "image": image,
            "mask": mask,
            "token_mask": masks_lib.token_mask(mask, self.vae_patch_size),
            "masked_image": np.multiply(base, keep, dtype=np.float32),
            "text_ids": np.stack([r["text_ids"] for r in good]),
            "decoder_none": np.array([r["decoder_none"] for r in good], bool),
            "id": np.array([r["id"] for r in good]),
        }
        return out


def _ensure_absl_flags() -> None:
    # Grain reads absl flags when it starts workers and fails if they were
    # never parsed (plain scripts and pytest don't parse them).
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class Loader:
    """This host's loader over `source`. Iterate it for batches (dicts of numpy arrays).

    process_index / process_count default to jax.process_index() /
    jax.process_count(); hosts read disjoint shards that together cover the
    source once per epoch.
    """

    def __init__(self, source, config: PipelineConfig = PipelineConfig(),
                 tokenizer: Tokenizer | None = None,
                 process_index: int | None = None, process_count: int | None = None):
        if process_index is None or process_count is None:
            import jax
            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if not 0 <= process_index < process_count:
            raise DataError(f"process_index {process_index} not in [0, {process_count})")
        if config.image_size % config.vae_patch_size:
            raise DataError(f"image_size {config.image_size} is not a multiple of "
                            f"vae_patch_size {config.vae_patch_size}")
        if isinstance(config.mask, str) and config.mask not in ("source", *masks_lib.FAMILIES):
            raise DataError(f"unknown mask {config.mask!r}; choose 'source' or one of "
                            f"{sorted(masks_lib.FAMILIES)}")
        if len(source) < process_count:
            raise DataError(f"{source!r}: {len(source)} examples cannot be split "
                            f"over {process_count} hosts")
        self.source, self.config = source, config
        self.tokenizer = tokenizer or ByteTokenizer()
        shard = _HostShard(source, process_index, process_count)
        if config.mask == "source":
            first = shard[0]
            if "error" not in first and "mask" not in first:
                raise DataError(f"{source!r}: mask='source' but its examples have no mask")
        no_sharding = grain.sharding.NoSharding()
        sampler = grain.samplers.IndexSampler(
            len(shard), shard_options=no_sharding, shuffle=config.shuffle,
            num_epochs=config.num_epochs, seed=config.seed)
        _ensure_absl_flags()
        self._grain = grain.DataLoader(
            data_source=shard, sampler=sampler,
            operations=[_Prepare(config, self.tokenizer),
                        grain.transforms.Batch(config.batch_size, drop_remainder=False,
                                               batch_fn=_Collate(config.vae_patch_size))],
            worker_count=config.worker_count, worker_buffer_size=config.worker_buffer_size,
            shard_options=no_sharding)

    def __iter__(self) -> "LoaderIterator":
        return LoaderIterator(self)


class LoaderIterator:
    """Yields batches; `get_state()` after batch N and `set_state()` on a fresh
    iterator (any process) continue with batch N+1.

    The workers deliver groups of `batch_size` examples minus the unreadable
    ones; this class counts those and cuts the stream of good rows into
    batches of exactly `batch_size` (no copy when nothing was skipped).
    """

    def __init__(self, loader: Loader):
        self.config = loader.config
        self._chunks = iter(loader._grain)
        self.stats = LoaderStats()
        self._head = None        # the worker batch being consumed
        self._head_state = None  # grain state just before `_head` was fetched
        self._offset = 0         # rows of `_head` already returned
        self._errors_in_a_row = 0

    def __iter__(self):
        return self

    def _rows_left(self) -> int:
        return 0 if self._head is None else len(self._head["mask"]) - self._offset

    def _fetch(self, count_errors: bool = True) -> None:
        state = self._chunks.get_state()
        chunk = next(self._chunks)
        if count_errors:
            for message in chunk["errors"]:
                log.warning("skipping unreadable example: %s", message)
                self.stats.record_error(message)
        self._head, self._head_state, self._offset = chunk.get("batch"), state, 0
        self._errors_in_a_row = 0 if "batch" in chunk else (
            self._errors_in_a_row + len(chunk["errors"]))
        if self._errors_in_a_row >= MAX_ERRORS_IN_A_ROW:
            raise DataError(f"{self._errors_in_a_row} unreadable examples in a row; "
                            f"last: {chunk['errors'][-1]}")

    def __next__(self) -> dict:
        parts, need = [], self.config.batch_size
        while need:
            if not self._rows_left():
                try:
                    self._fetch()
                except StopIteration:
                    if parts and not self.config.drop_remainder:
                        break
                    raise
                continue
            take = min(need, self._rows_left())
            end = self._offset + take
            # Plain-ndarray views: slicing grain's shared-memory arrays directly
            # would make each slice try to free the shared block.
            parts.append({k: np.asarray(v)[self._offset:end] for k, v in self._head.items()})
            self._offset, need = end, need - take
        if len(parts) == 1:
            batch = parts[0]
        else:
            batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if not self.config.with_ids:
            del batch["id"]
        self.stats.examples += len(batch["mask"])
        self.stats.batches += 1
        return batch

    def get_state(self) -> dict:
        """JSON-serialisable position in the stream (taken between batches)."""
        if self._rows_left():
            grain_state, offset = self._head_state, self._offset
        else:
            grain_state, offset = self._chunks.get_state(), 0
        return {"grain": grain_state.decode(), "offset": offset,
                "stats": dataclasses.asdict(self.stats)}

    def set_state(self, state: dict) -> None:
        """Continue from a `get_state()` result of an iterator over the same
        source and config."""
        self._chunks.set_state(state["grain"].encode())
        self._head, self._offset = None, 0
        if state["offset"]:
            # Its errors were counted before the state was taken.
            self._fetch(count_errors=False)
            self._offset = state["offset"]
        self.stats = LoaderStats(**state["stats"])
