"""Tiny stage-1 run for tests and CI: the `tiny` DF-VQGAN (32 px; every defect-free op, attention
included) on the synthetic shapes, discriminator on from step 20, random-weight LPIPS."""

import os

from lip_jax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "dfvqgan_imagenet.py:tiny"))
    c.data.source = "shapes"
    c.data.source_kwargs = dict(root="", num_examples=512, image_size=32, seed=0)  # root: for source=folder
    c.data.batch_size = 4
    c.data.workers = 0
    c.data.augment = "none"
    c.train.update(total_steps=200, base_lr=2.5e-5, disc_start=20, disc_ndf=8, log_every=10,
                   save_every=50, sample_every=0, keep=2)
    return c
