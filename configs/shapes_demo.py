"""The demo (`lip-jax demo`): both stages on the synthetic captioned shapes at 32 px, on CPU.

    lip-jax demo [--workdir runs/demo]                  # stage 1, stage 2, then the report
    lip-jax demo --quality                              # the same, trained longer (:quality)
    lip-jax train --config configs/shapes_demo.py:stage1 --workdir runs/demo/stage1
    lip-jax train --config configs/shapes_demo.py:stage2 --workdir runs/demo/stage2 \
        --config.vqgan_ckpt=runs/demo/stage1

Same code paths as the official recipes, at toy size: a DF-VQGAN with 4x4-pixel tokens (8x8 grid,
256 codes), and an MP-S2S whose text view uses the CLIP BPE tokenizer (one id per word, so a few
minutes of training learn the colour and shape words). One object per scene; stage 2 learns with
holes that hide an object entirely, so only the caption says what belongs there.

Demo-scale choices (issue 17; each measured, see the README's demo section):
- objects drawn at twice the dataset's default size (`object_scale=2`: 11 and 18 px, 3-4.5 tokens
  wide), so that a shape is a pattern of several tokens rather than one or two blurred tokens;
- stage 1 trains on the demo's own holes (an object hidden, the rest through the symmetrical
  connections) instead of the ImageNet mask mixture, whose no-hole / full-hole / decoder-without-
  skips rows do not train the path the demo uses; no attention (no measurable gain at 8x8 latents);
- stage 1 at 2e-3 decayed to zero by a cosine over its steps (`train.lr_decay`; the official
  recipe keeps a constant rate): the last steps at a high constant rate left the decoder noisy
  (PSNR outside the hole 26.8 -> 29.4 dB on the demo's scenes). Issue 30, on 256 held-out scenes,
  stage 1 alone (tokens of the ground truth decoded with the skips: the ceiling of stage 2), one run
  each: 4e-3 gave 30.3 dB and 76% of shapes, 2e-3 32.6 dB and 74%, 8e-3 26.4 dB and 61%; Adam
  (0.9, 0.99) instead of the official (0.5, 0.9) 29.7 dB and 69%; batch 4 for 2000 steps 33.2 dB and
  76%; holes over every object (`Shapes(hide_all=True)`) 82% of shapes but 27.7 dB. Shape rates
  of two runs of one recipe differ by about 5 points, so only the PSNR gain is taken. No previews,
  one save per stage (every compilation and checkpoint counts in a 10-minute budget);
- steps: the MP-S2S learns the shape words late (stage 1 at 1000 steps: its holes show the true /
  counterfactual caption's shape in 48 / 35% of the scenes after 500 stage-2 steps, 65 / 65% after
  1500; 1500 + 1000 steps: 52 / 38%), so the default spends its 10 minutes on 1000 + 1500 steps;
  `:quality` adds 1000 stage-1 steps (then, 48 scenes: PSNR outside the hole 30 -> 35 dB, shape
  65 -> 75 / 69%; with stage 1 at 2e-3, 256 scenes, seed 0: 32.6 -> 38.1 dB, shape 62 / 52 -> 67 / 62%);
  one candidate per hole (ranking 4 by the MP-S2S's own likelihood moved the shape rate by -12 to
  +8 points: noise at 48 scenes).
"""

import os

import ml_collections

from lip_jax.config import load_config

_HERE = os.path.dirname(os.path.abspath(__file__))
SIZE, TOKEN = 32, 4  # image side, VQ token side (pixels)
VQGAN = dict(resolution=SIZE, in_channels=3, out_ch=3, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
             attn_resolutions=(), z_channels=16, n_e=256, e_dim=16, beta=0.25, legacy=False)
# Smooth backgrounds; stage 1 sees up to 3 objects per scene (colours and shapes common enough for the
# codebook to learn them in a few hundred steps), stage 2 and the evaluation one object per scene.
SHAPES = dict(num_examples=50_000, image_size=SIZE, seed=0, max_objects=1, texture=0.0, object_scale=2.0)


def stage1() -> ml_collections.ConfigDict:
    c = load_config(os.path.join(_HERE, "dfvqgan_imagenet.py:tiny"))
    c.seed = 0
    c.vqgan = ml_collections.ConfigDict(VQGAN)
    c.data.source = "shapes"
    c.data.source_kwargs = dict(SHAPES, max_objects=3, object_hole=TOKEN)  # assigned, not merged
    c.data.update(image_size=SIZE, batch_size=8, mask="source", augment="none", workers=0, seed=0)
    # No LPIPS (its VGG weights cannot ship) and no GAN: L1 + codebook are enough for flat shapes.
    c.train.update(total_steps=1000, base_lr=2.5e-4, lr_decay="cosine", disc_start=10**9, perceptual_weight=0.0,
                   log_every=25, save_every=1000, sample_every=0, keep=1)
    return c


def stage2() -> ml_collections.ConfigDict:
    c = load_config(os.path.join(_HERE, "mps_cc.py:mid"))
    c.seed = 0
    c.vqgan = ml_collections.ConfigDict(VQGAN)
    c.vqgan_ckpt = ""
    c.mps.update(img_size=SIZE, vae_patch_size=TOKEN, vit_patch_size=8, vqvae_vocab_size=VQGAN["n_e"],
                 vae_emb_dim=VQGAN["e_dim"], dim=96, dec_depth=3, enc_depth=1, heads=3, dim_head=32,
                 attn_dropout=0.0, ff_dropout=0.0, kernel_size=3, text_vocab_size=49408, text_len=16,
                 text_width=64, text_layers=1, text_heads=2, tokenizer="clip", pth_layout="clean")
    c.data.source = "shapes"
    c.data.source_kwargs = dict(SHAPES, object_hole=TOKEN)
    c.data.update(image_size=SIZE, batch_size=16, mask="source", augment="none", workers=0, seed=0,
                  vae_patch_size=TOKEN)
    c.train.update(total_steps=1500, lr=2e-3, log_every=25, save_every=1500, sample_every=0, keep=1)
    c.sample.update(top_k=8, temperature=1.0, num_samples=1)
    c.eval.update(sample_K=1, best_n=1, top_k=8, batch_size=16)
    return c


def demo() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage1, c.stage2 = stage1(), stage2()
    # Held-out scenes: another seed than training; each is inpainted with its true caption and
    # with a counterfactual one (another colour and shape).
    # 256 scenes: a rate's 95% interval is then about +-6 points (48 gave +-13).
    c.eval = dict(num_images=256, seed=1, grid_images=8)
    return c


def quality() -> ml_collections.ConfigDict:
    """`lip-jax demo --quality`: the same demo with stage 1 trained twice as long (2000 steps)."""
    c = demo()
    c.stage1.train.update(total_steps=2000, save_every=2000)
    return c


def smoke() -> ml_collections.ConfigDict:
    """The demo's code path in seconds (tests): a few steps per stage, a few images."""
    c = demo()
    for s in (c.stage1, c.stage2):
        s.train.update(total_steps=2, log_every=1, save_every=2, sample_every=0)
    c.eval.update(num_images=4, grid_images=2)
    return c


def get_config(arg=None):
    makers = {"stage1": stage1, "stage2": stage2, None: demo, "": demo, "demo": demo, "quality": quality,
              "smoke": smoke}
    if arg not in makers:
        raise ValueError(f"unknown shapes_demo config {arg!r}; choose from stage1, stage2, demo, quality, smoke")
    return makers[arg]()
