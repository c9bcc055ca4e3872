"""Tiny stage-2 run for tests and CI: a 4x4-token MP-S2S over the `reduced` DF-VQGAN (32 px) on the
synthetic shapes, byte tokenizer. `vqgan_ckpt` must be set (tests write a random one)."""

import os

from lip_jax.config import load_config
from lip_jax.models import dfvqgan


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mps_cc.py") + ":mid")
    vq = dfvqgan.PRESETS["reduced"]
    c.vqgan = dict(vq)
    c.mps.update(img_size=32, vae_patch_size=8, vit_patch_size=16, vqvae_vocab_size=vq["n_e"],
                 vae_emb_dim=vq["e_dim"], dim=32, dec_depth=4, enc_depth=1, heads=2, dim_head=16,
                 attn_dropout=0.1, ff_dropout=0.1, kernel_size=3, text_vocab_size=259, text_len=24,
                 text_width=32, text_layers=1, text_heads=2, tokenizer="bytes")
    c.data.source_kwargs = dict(root="", num_examples=512, image_size=32, seed=0)  # replaced, not merged; root: for source=folder
    c.data.update(source="shapes", image_size=32, batch_size=8, workers=0, augment="none", vae_patch_size=8)
    c.train.update(total_steps=200, lr=2e-3, log_every=10, save_every=50, keep=2)
    return c
