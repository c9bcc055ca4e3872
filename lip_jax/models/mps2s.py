"""MP-S2S: NUWA-LIP's multi-perspective sequence-to-sequence inpainting transformer (Flax linen).

Three views of a defective image condition an autoregressive decoder over VQ tokens:
  * token view: `transformer_enc` over the known tokens (holes replaced by `image_msk_emb`);
  * pixel view: `transformer_pth` over ViT patches of the defective image (`patch_emb`);
  * text view:  the CLIP text transformer, all token states after ln_final, through `cond_emb`.
`transformer_dec` runs over BOS + (token embeddings at holes, `image_msk_emb` at known slots) with
causal self-attention cycling through `attn_types_dec` ("full" / "nearby": a kernel x kernel window
of the token grid, BOS always visible) and cross-attention over cat(token view, pixel view, text).
Logits at sequence position i predict grid token i; the loss is cross-entropy on holes only.

Module names follow the official state dict (`transformer_dec.layers.N.attention.q_linear`, ...)
so lip_jax.weights.mps2s is a short table. Masks: True = hole (defective).

Logical axis names used by the parameters (for a MaxText-style sharding rule table):
  vocab      codebook / text-vocabulary rows, logits output
  embed      model width (dim) and the CLIP text width inside the text tower
  embed_in   cond_emb input (text width)
  codebook   DF-VQGAN codebook vector size (vae_emb columns, image_emb input)
  heads      fused heads * dim_head axis of q/k/v/out projections
  qkv        CLIP's fused 3 * width in_proj axis
  mlp        feed-forward hidden axis
  glu        GEGLU's value / gate half of dense_h_to_8h (kernel [dim, 2, mlp]: each `tensor`
             shard then holds matching halves, and splitting them moves no data)
  norm       LayerNorm scale / bias
  ctx        text positions
  patch_h, patch_w, rgb   ViT patch convolution window and input channels
  axial_0, axial_1, axial_2   axial positional-embedding axes (1, H, W)
  (None for size-1 broadcast axes of LayerScale, BOS and mask embeddings)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from lip_jax.models.clip import ClipText, dense, layer_norm, part
from lip_jax.models.mps2s_config import PRESETS, MPSConfig
from lip_jax.models.mps2s_layers import AxialPositionalEmbedding, Transformer, normal_init
from lip_jax.sharding import constrain_batch

__all__ = ["MPS2S", "MPSConfig", "PRESETS", "check_inputs", "decoder_allowed", "hole_loss", "hole_nll",
           "init_boxed", "init_params", "logical_axes", "nearby_allowed"]


# --- attention masks (True = may attend) ----------------------------------------------------------

def nearby_allowed(q_pos, k_pos, grid: tuple[int, int], kernel_size: int):
    """Decoder sequence positions (0 = BOS, p >= 1 = grid token p - 1): window of kernel x kernel
    around the query's grid token, BOS row and column always open. Broadcasts q_pos against k_pos."""
    w = grid[1]
    lo = kernel_size // 2
    hi = kernel_size - 1 - lo
    qg, kg = q_pos - 1, k_pos - 1
    dr = kg // w - qg // w
    dc = kg % w - qg % w
    inside = (dr >= -lo) & (dr <= hi) & (dc >= -lo) & (dc <= hi)
    return inside | (q_pos == 0) | (k_pos == 0)


def decoder_allowed(q_pos, k_pos, attn_type: str, grid: tuple[int, int], kernel_size: int):
    causal = k_pos <= q_pos
    if attn_type == "full":
        return causal
    return causal & nearby_allowed(q_pos, k_pos, grid, kernel_size)


class MPS2S(nn.Module):
    """Pure function of (params, inputs). Inputs: tokens int [B, N] (N = h*w grid, row-major),
    token_mask bool [B, N] (True = hole), image float [B, H, W, 3] in [-1, 1] (the defective image),
    text_ids int [B, text_len]."""

    cfg: MPSConfig

    def setup(self):
        c = self.cfg
        dt = c.jnp_dtype
        self.encoder = ClipText(c.text_vocab_size, c.text_len, c.text_width, c.text_layers, c.text_heads,
                                cond_dim=c.dim, dtype=dt, name="encoder")
        self.vae_emb = nn.Embed(c.vqvae_vocab_size, c.vae_emb_dim, name="vae_emb",
                                embedding_init=part(normal_init(1.0), ("vocab", "codebook")))
        self.image_emb = dense(c.dim, ("codebook", "embed"), "image_emb", dtype=dt)
        p = c.vit_patch_size
        self.patch_emb = nn.Conv(c.dim, (p, p), strides=(p, p), padding="VALID", name="patch_emb", dtype=dt,
                                 kernel_init=part(nn.initializers.lecun_normal(), ("patch_h", "patch_w", "rgb", "embed")),
                                 bias_init=part(nn.initializers.zeros_init(), ("embed",)))
        self.image_bos_emb = self.param("image_bos_emb", part(normal_init(1.0), (None, "embed")), (1, c.dim))
        self.image_msk_emb = self.param("image_msk_emb", part(normal_init(1.0), (None, "embed")), (1, c.dim))
        self.image_pos_emb_vae = AxialPositionalEmbedding(c.dim, (1, *c.grid), name="image_pos_emb_vae")
        self.image_pos_emb_vit = AxialPositionalEmbedding(c.dim, (1, *c.vit_grid), name="image_pos_emb_vit")
        self.transformer_dec = Transformer(c, c.dec_depth, True, name="transformer_dec")
        self.transformer_enc = Transformer(c, c.enc_depth, False, name="transformer_enc")
        self.transformer_pth = Transformer(c, c.enc_depth, False, name="transformer_pth")
        self.to_logits_img_0 = layer_norm("to_logits_img_0")
        self.to_logits_img_1 = dense(c.vqvae_vocab_size, ("embed", "vocab"), "to_logits_img_1", dtype=dt)

    # -- embeddings -----------------------------------------------------------------------------------
    def token_embed(self, tokens, positions):
        """image_emb(vae_emb(tokens)) + axial position; tokens [B, C] at grid positions [B, C]."""
        pos = self.image_pos_emb_vae()[0]
        # the codebook gather loses the batch split under FSDP (plan: [B_global * N, dim] per device)
        return self.image_emb(constrain_batch(self.vae_emb(tokens))) + pos[positions]

    def pixel_view(self, image, deterministic=True):
        c = self.cfg
        x = self.patch_emb(image.astype(c.jnp_dtype))  # [B, h', w', dim]
        b = x.shape[0]
        if c.pth_layout == "torch":  # reproduce NCHW .view(B, -1, dim) of the official code
            x = jnp.transpose(x, (0, 3, 1, 2))
        x = constrain_batch(x.reshape(b, -1, c.dim) + self.image_pos_emb_vit())
        return self.transformer_pth(x, None, None, deterministic)

    def encode(self, tokens, token_mask, image, text_ids, deterministic: bool = True):
        """cat(token view, pixel view, text view) [B, cond_len, dim]: the decoder's cross-attention input."""
        b, n = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(n), (b, n))
        emb = self.token_embed(tokens, positions)  # position added before the mask is mixed in
        tokens_enc = constrain_batch(jnp.where(token_mask[..., None], self.image_msk_emb, emb))
        enc_out = self.transformer_enc(tokens_enc, None, None, deterministic)
        pth_out = self.pixel_view(image, deterministic)
        text = self.encoder(text_ids)
        return constrain_batch(jnp.concatenate([enc_out, pth_out, text.astype(enc_out.dtype)], axis=1))

    def decoder_inputs(self, tokens, token_mask, seq_pos):
        """Decoder input at sequence positions seq_pos [B, C]: BOS at 0, else grid token p - 1's
        embedding where it is a hole and the (position-free) mask embedding where it is known."""
        n = tokens.shape[1]
        g = jnp.clip(seq_pos - 1, 0, n - 1)
        tok = jnp.take_along_axis(tokens, g, axis=1)
        hole = jnp.take_along_axis(token_mask, g, axis=1)
        x = jnp.where(hole[..., None], constrain_batch(self.token_embed(tok, g)), self.image_msk_emb)
        return constrain_batch(jnp.where((seq_pos == 0)[..., None], self.image_bos_emb, x))

    def cross_kv(self, cond):
        return self.transformer_dec.cross_kv(cond)

    def logits_head(self, h):
        return constrain_batch(self.to_logits_img_1(self.to_logits_img_0(h)).astype(jnp.float32))

    # -- teacher-forced forward -----------------------------------------------------------------------
    def __call__(self, tokens, token_mask, image, text_ids, deterministic: bool = True):
        """Logits [B, N, vocab]: position i predicts grid token i from BOS + tokens < i."""
        c = self.cfg
        b, n = tokens.shape
        cond = self.encode(tokens, token_mask, image, text_ids, deterministic)
        # BOS + tokens[:-1]: the official sequence also feeds the last token, whose output is unused
        # and (causal) changes no other output; n positions keep cuDNN's even-length kernels usable.
        seq = jnp.broadcast_to(jnp.arange(n), (b, n))
        x = self.decoder_inputs(tokens, token_mask, seq)
        qp, kp = np.arange(n)[:, None], np.arange(n)[None, :]
        # "full" is the blocks' causal attention alone (no mask array: cuDNN's causal kernel)
        masks = {"full": None, "nearby": jnp.asarray(decoder_allowed(qp, kp, "nearby", c.grid, c.kernel_size))}
        allowed = [masks[t] for t in c.dec_layer_types()]
        x = self.transformer_dec(x, allowed, cond, deterministic)
        return self.logits_head(x)

    # -- cached decoding ------------------------------------------------------------------------------
    def decode_chunk(self, tokens, token_mask, seq_pos, valid, query_index, cross_kv, caches):
        """Run decoder positions seq_pos [B, C] (contiguous per row, from seq_pos[:, 0]; slots with
        valid[b, i] are new, the cache holds every earlier position) against the self-attention
        caches (k [B, H, dh, T], v [B, H, T, dh]) and cross_kv (kv_heads layouts); returns logits
        [B, vocab] at chunk index query_index [B] (None: at every chunk position, [B, C, vocab]) and
        the new caches."""
        c = self.cfg
        x = self.decoder_inputs(tokens, token_mask, seq_pos)
        t = caches[0][1].shape[2]
        kp = jnp.arange(t)[None, None, :]
        qp = seq_pos[:, :, None]
        first = jnp.min(jnp.where(valid, seq_pos, t), axis=1)[:, None, None]  # cache slots >= first are stale
        allow = lambda k, ty: decoder_allowed(qp, k, ty, c.grid, c.kernel_size)  # noqa: E731
        masks = {ty: ((allow(kp, ty) & (kp < first))[:, None],
                      (allow(seq_pos[:, None, :], ty) & valid[:, None, :])[:, None]) for ty in set(c.attn_types_dec)}
        allowed = [masks[ty] for ty in c.dec_layer_types()]
        x, caches = self.transformer_dec.chunk(x, allowed, cross_kv, caches, seq_pos[:, 0], valid)
        if query_index is None:
            return self.logits_head(x), caches
        h = jnp.take_along_axis(x, query_index[:, None, None], axis=1)[:, 0]
        return self.logits_head(h), caches


def hole_nll(logits, tokens, token_mask):
    """(summed cross-entropy over hole tokens, number of hole tokens): sums, so that gradient
    accumulation can combine microbatches into the batch mean over hole tokens exactly."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    m = token_mask.astype(jnp.float32)
    return jnp.sum(nll * m), jnp.sum(m)


def hole_loss(logits, tokens, token_mask):
    """Mean cross-entropy over hole tokens of the whole batch (ignore_index semantics)."""
    total, holes = hole_nll(logits, tokens, token_mask)
    return total / jnp.maximum(holes, 1.0)


def check_inputs(cfg: MPSConfig, tokens, token_mask, image, text_ids):
    """Shape/dtype validation with one-line errors; returns (tokens int32 [B,N], mask bool [B,N])."""
    n = cfg.num_tokens
    tokens = jnp.asarray(tokens)
    token_mask = jnp.asarray(token_mask)
    b = tokens.shape[0] if tokens.ndim else 0
    if tokens.ndim == 3:
        tokens = tokens.reshape(b, -1)
    if token_mask.ndim == 3:
        token_mask = token_mask.reshape(token_mask.shape[0], -1)
    if tokens.ndim != 2 or tokens.shape[1] != n or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integer [B, {n}] (or [B, {cfg.grid[0]}, {cfg.grid[1]}]), got {tokens.dtype} {tokens.shape}")
    if token_mask.shape != tokens.shape:
        raise ValueError(f"token_mask shape {token_mask.shape} != tokens shape {tokens.shape}")
    if token_mask.dtype != jnp.bool_:
        raise ValueError(f"token_mask must be bool (True = hole), got {token_mask.dtype}")
    if tuple(image.shape) != (b, cfg.img_size, cfg.img_size, 3):
        raise ValueError(f"image must be NHWC [{b}, {cfg.img_size}, {cfg.img_size}, 3], got {tuple(image.shape)}")
    if tuple(text_ids.shape) != (b, cfg.text_len):
        raise ValueError(f"text_ids must be [{b}, {cfg.text_len}], got {tuple(text_ids.shape)}")
    return tokens.astype(jnp.int32), token_mask


def init_params(cfg, rng, batch: int = 1):
    """Unboxed float32 parameters of MPS2S(cfg) (use `logical_axes` for the partitioning names)."""
    cfg = MPSConfig.from_any(cfg)
    return jax.jit(lambda r: nn.meta.unbox(init_boxed(cfg, r, batch)))(rng)


def logical_axes(cfg) -> Any:
    """Tree of logical axis-name tuples matching init_params(cfg)."""
    cfg = MPSConfig.from_any(cfg)
    boxed = jax.eval_shape(lambda r: init_boxed(cfg, r, 1), jax.random.PRNGKey(0))
    return nn.get_partition_spec(boxed)


def init_boxed(cfg, rng, batch: int = 1):
    """Parameters of MPS2S(cfg) boxed with their logical axis names."""
    cfg = MPSConfig.from_any(cfg)
    n = cfg.num_tokens
    dummy = (jnp.zeros((batch, n), jnp.int32), jnp.zeros((batch, n), bool),
             jnp.zeros((batch, cfg.img_size, cfg.img_size, 3), jnp.float32),
             jnp.zeros((batch, cfg.text_len), jnp.int32))
    return MPS2S(cfg).init(rng, *dummy)["params"]


def param_template(cfg) -> dict:
    """Parameter shapes of MPS2S(cfg) (no allocation)."""
    cfg = MPSConfig.from_any(cfg)
    return jax.eval_shape(lambda r: init_params(cfg, r), jax.random.PRNGKey(0))
