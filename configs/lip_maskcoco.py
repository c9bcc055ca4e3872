"""NUWA-LIP evaluation on MaskCOCO, the official `config/lip4maskcoco/base.py` recipe.

    lip-jax eval --config configs/lip_maskcoco.py --ckpt ckpt/lip_coco --data data/MaskCOCO \
        --out runs/eval_maskcoco [--clip ViT-B-32.pt] [--lpips ckpt/lpips] \
        [--fid-weights pt_inception-2015-12-05-6726825d.pth] [--config.eval.seed=0 ...]

Model: the official MP-S2S ("coco" = "cc" hyper-parameters) over the 8192-code DF-VQGAN, 256 px.
Sampling as the official Args: tk 128, temperature 1, sample_K 2 candidates per image, best_n 2
kept after CLIP reranking (the official code saves the best one). `get_config("tiny")` pairs the
`reduced` DF-VQGAN (32 px, 4x4 tokens, 128 codes) with the small MP-S2S of configs/test_stage2.py
(two decoder layers), for tests; everything else is the same code path.
"""

import os

import ml_collections

HERE = os.path.dirname(os.path.abspath(__file__))


def build(preset: str, dataset: str) -> ml_collections.ConfigDict:
    from lip_jax.config import load_config
    from lip_jax.models import dfvqgan, mps2s  # lazily: config files stay importable alone

    c = ml_collections.ConfigDict()
    if preset == "tiny":
        base = load_config(os.path.join(HERE, "test_stage2.py"))
        c.mps, c.vqgan = base.mps, base.vqgan
        # Two decoder layers, no dropout: the MP-S2S of tests/test_inpaint.py, so the tests share
        # its compiled sampler (compilation dominates their run time).
        c.mps.update(dec_depth=2, text_len=16, attn_dropout=0.0, ff_dropout=0.0)
    elif preset in ("coco", "cc"):
        base = load_config(os.path.join(HERE, "mps_cc.py") + ":" + preset)
        c.mps = ml_collections.ConfigDict(mps2s.PRESETS[preset])
        c.vqgan = ml_collections.ConfigDict(dfvqgan.PRESETS["imagenet8192"])
    else:
        raise ValueError(f"unknown preset {preset!r}; have coco, cc, tiny")
    c.data = dict(source="mask_eval", dataset=dataset)
    c.eval = base.eval  # the training config's evaluation settings: one definition
    c.sample = base.sample  # inpaint's defaults and the token decoder (sample.decoder), as trained
    # Several hosts: as training (lip_jax.train.trainer.initialize_distributed); enabled with no
    # other field reads TPU / SLURM environments.
    c.distributed = dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1,
                         cpu_collectives="")
    return c


def get_config(arg=None):
    return build(arg or "coco", "MaskCOCO")
