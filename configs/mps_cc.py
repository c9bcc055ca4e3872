"""MP-S2S pre-training on Conceptual Captions (official config/mps4cc/base.py).

    get_config()        official sizes (lip_jax.models.mps2s.PRESETS["cc"]) + DF-VQGAN imagenet8192
    get_config("tiny")  the same code paths at test size (DF-VQGAN "tiny")
"""

import ml_collections

# Official `Args` values that are not model hyper-parameters.
TRAIN = dict(train_batch_size=8, eval_batch_size=8, learning_rate=5e-4, epochs=5000, seed=42,
             eval_step=1, save_step=1, max_source_len=35, ignore_index=-100,
             # random box masks on the 32x32 token grid (MaskingGenerator)
             min_vmlm_ratio=0.5, max_vmlm_ratio=0.7, min_per_mask_ratio=0.1, max_per_mask_ratio=0.3, attempt=5)
SAMPLE = dict(top_k=128, temperature=1.0, num_samples=2, best_n=2)  # official tk, temperature, sample_K, best_n
VQGAN_PRESET = {"cc": "imagenet8192", "coco": "imagenet8192", "mid": "imagenet8192", "tiny": "tiny"}


def build(preset: str, train_overrides: dict) -> ml_collections.ConfigDict:
    from lip_jax.models import dfvqgan, mps2s  # imported lazily: configs stay importable alone

    if preset not in mps2s.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; have {sorted(mps2s.PRESETS)}")
    config = ml_collections.ConfigDict()
    config.mps = ml_collections.ConfigDict(mps2s.PRESETS[preset])
    config.vqgan = ml_collections.ConfigDict(dfvqgan.PRESETS[VQGAN_PRESET[preset]])
    config.train = ml_collections.ConfigDict({**TRAIN, **train_overrides})
    config.sample = ml_collections.ConfigDict(SAMPLE)
    config.init_checkpoint = ""  # official release .pth ({"model": state_dict}) or empty
    return config


def get_config(arg=None):
    return build(arg or "cc", {})
