"""MP-S2S pre-training on Conceptual Captions, the official `config/mps4cc/base.py` recipe.

    lip-jax train --config configs/mps_cc.py --workdir DIR --config.vqgan_ckpt=ckpt/dfvqgan \
        --config.data.source_kwargs.root=/data/cc

The DF-VQGAN is frozen (orbax checkpoint from `lip-jax convert` or stage 1); `vae_emb` starts from
its codebook. `get_config("mid")` / `("tiny")` select the smaller MP-S2S presets.
"""

import ml_collections

# Official `Args` values besides the model: batch 8 per process, AdamW 5e-4 with 5% linear warm-up
# then linear decay (finetune.py), masks of 50-70% of the image in boxes of 10-30% (MaskingGenerator).
VQGAN_PRESET = {"cc": "imagenet8192", "coco": "imagenet8192", "mid": "imagenet8192"}


def build(preset: str) -> ml_collections.ConfigDict:
    from lip_jax.models import dfvqgan, mps2s  # lazily: config files stay importable alone

    if preset not in VQGAN_PRESET:
        raise ValueError(f"unknown preset {preset!r}; have {sorted(VQGAN_PRESET)}")
    c = ml_collections.ConfigDict()
    c.stage = 2
    c.seed = 42
    c.mps = ml_collections.ConfigDict(mps2s.PRESETS[preset])
    # Official training checkpointed every transformer layer (mpu.checkpoint) in float32 (use_amp
    # off): remat "full" at the official size. dtype "bfloat16" = bf16 compute, float32 master weights.
    c.mps.remat = "full" if preset in ("cc", "coco") else "none"
    c.mps.dtype = "float32"
    # One compiled layer group per transformer instead of 48 unrolled blocks (minutes of compile).
    c.mps.scan_layers = preset in ("cc", "coco")
    c.mps.attention = "auto"  # cuDNN flash attention on GPU in bfloat16, XLA otherwise
    c.vqgan = ml_collections.ConfigDict(dfvqgan.PRESETS[VQGAN_PRESET[preset]])
    c.vqgan_ckpt = ""
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(source="cc", source_kwargs=dict(root="", split="train"), image_size=c.mps.img_size,
                  batch_size=8, mask="stage2", augment="stage2", workers=2, seed=42,
                  vae_patch_size=c.mps.vae_patch_size, shards=0)  # shards 0: one per process
    # optimizer: "transformers_adamw" (official finetune.py) or "optax_adamw"; see lip_jax/train/optim.py.
    c.train = dict(total_steps=1_000_000, lr=5e-4, warmup_fraction=0.05, weight_decay=0.0, grad_accum=1,
                   max_skipped_steps=10, skip_grad_norm=float("inf"),  # divergence guard (lip_jax.train.faults)
                   max_update_ratio=1.0,  # ... and a step moving the weights by more than this times their norm
                   optimizer="transformers_adamw", max_grad_norm=0.0, init_ckpt="", log_details=False,
                   log_every=50, save_every=5000, sample_every=0, keep=3)
    c.sample = dict(top_k=128, temperature=1.0, num_samples=2, best_n=2,  # official tk, sample_K, best_n
                    decoder="auto")  # auto | sequential | parallel (lip_jax.sample); eval uses it too
    # `lip-jax eval` of this model (the official lip4maskcoco evaluation settings).
    c.eval = dict(
        sample_K=2,            # candidates sampled per image (official sample_K)
        best_n=2,              # candidates kept per image after reranking (official best_n)
        top_k=128,             # official tk
        temperature=1.0,
        seed=42,               # per batch: derived from (seed, index of its first example)
        batch_size=8,          # images per sampling batch (global: its rows are split over every device)
        clip_resize="nearest",  # the official reranker's F.interpolate(size=224); "bicubic" = OpenAI's
        clip_config="",        # CLIP preset for --clip when head counts are not width / 64
        metric_batch_size=32,  # images per LPIPS / Inception / CLIP-score batch (per process)
        max_examples=0,        # 0 = every example (official max_eval_samples)
    )
    c.distributed = dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1,
                         cpu_collectives="")
    return c


def get_config(arg=None):
    return build(arg or "cc")
