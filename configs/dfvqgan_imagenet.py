"""DF-VQGAN on ImageNet, the official `dfvq4imagenet` recipe (8192 codes, 256 px, 32x32 tokens).

    lip-jax train --config configs/dfvqgan_imagenet.py --workdir DIR \
        --config.data.source_kwargs.root=/data/imagenet --config.train.lpips_ckpt=ckpt/lpips

`configs/dfvqgan_imagenet.py:tiny` / `:reduced` select the small model presets the tests use.
"""

import ml_collections

from lip_jax.models.dfvqgan import PRESETS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = {None: "imagenet8192", "": "imagenet8192", "official": "imagenet8192"}.get(arg, arg)
    if preset not in PRESETS:
        raise ValueError(f"unknown DF-VQGAN preset {arg!r}; choose from {sorted(PRESETS)} or 'official'")
    c = ml_collections.ConfigDict()
    c.stage = 1
    c.seed = 42
    c.vqgan = ml_collections.ConfigDict(PRESETS[preset])
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(source="imagenet", source_kwargs=dict(root=""), image_size=c.vqgan.resolution,
                  batch_size=48, mask="stage1", augment="stage1", workers=2, seed=42, vae_patch_size=8,
                  shards=0)  # data shards (0: one per process); fixes the global batch across host counts
    c.train = dict(
        total_steps=500_000,
        base_lr=4.5e-6,             # x data.batch_size, the batch of one update (official real_learning_rate)
        # In steps. Official: GAN loss and discriminator from epoch index 2 (epoch_threshold), i.e.
        # after 2 x ceil(N_train / batch) updates: 2 x ceil(1,281,135 / 48) = 53,382 for the full
        # ImageNet-1k list (minus the 32 val files); recompute it for another list or batch.
        disc_start=53_382,
        codebook_weight=1.0, perceptual_weight=1.0, discriminator_weight=0.8,
        disc_ndf=64, disc_layers=3,
        lpips_ckpt="",              # orbax LPIPS weights (lip-jax convert); required for real runs
        lpips_dropout=True,         # official: trainer's model.train() activates LPIPS head dropout
        init_ckpt="",               # orbax DF-VQGAN (+ discriminator) to start from (lip-jax convert)
        log_details=False,          # also log lr and grad_norm/<group> (a separate compiled step)
        log_every=50, save_every=5000, sample_every=5000, keep=3,
        max_skipped_steps=10, skip_grad_norm=float("inf"),  # divergence guard (lip_jax.train.faults)
        max_update_ratio=1.0)       # ... skips a step moving the weights by more than this times their norm
    c.distributed = dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1,
                         cpu_collectives="")
    return c
