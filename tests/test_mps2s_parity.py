"""PyTorch reference of the official NUWA-LIP MP-S2S structure (config/mps4coco/base.py `Net`),
written independently for parity tests: same parameter names and math, single process (the Megatron
column/row-parallel linears are plain nn.Linear), no DF-VQGAN (tokens are given)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClipBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x, causal):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=causal)[0]
        return x + self.mlp(self.ln_2(x))


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ClipTransformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.ModuleList([ClipBlock(width, heads) for _ in range(layers)])

    def forward(self, x, causal):
        for blk in self.resblocks:
            x = blk(x, causal)
        return x


class TextEncoder(nn.Module):
    """CLIP text tower pieces copied into NUWA-LIP's encoder + cond_emb; all token states."""

    def __init__(self, vocab, ctx, width, layers, heads, dim):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(ctx, width) * 0.1)
        self.transformer = ClipTransformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.cond_emb = nn.Linear(width, dim)

    def forward(self, ids):
        n = ids.shape[1]
        causal = torch.full((n, n), float("-inf")).triu(1)
        x = self.token_embedding(ids) + self.positional_embedding
        return self.cond_emb(self.ln_final(self.transformer(x, causal)))


def nearby_block_mask(rows, cols, kernel):
    """[1 + R*C, 1 + R*C] bool, True = blocked: query grid (i, j) sees a kernel x kernel window cut from
    a padded canvas; BOS row/column prepended and never blocked."""
    pad = kernel // 2
    n = rows * cols
    blocked = torch.ones(n, rows + 2 * pad, cols + 2 * pad, dtype=torch.bool)
    for i in range(rows):
        for j in range(cols):
            blocked[i * cols + j, i:i + kernel, j:j + kernel] = False
    blocked = blocked[:, pad:pad + rows, pad:pad + cols].reshape(n, n)
    return F.pad(blocked, (1, 0, 1, 0), value=False)


class Attn(nn.Module):
    def __init__(self, dim, heads, dim_head, block=None):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.q_linear = nn.Linear(dim, inner, bias=False)
        self.k_linear = nn.Linear(dim, inner, bias=False)
        self.v_linear = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.block = block  # plain attribute, like the official nb_mask (not in the state dict)

    def forward(self, q, k, v, mask=None):
        b, h = q.shape[0], self.heads
        split = lambda t: t.reshape(b, t.shape[1], h, -1).transpose(1, 2)
        q, k, v = split(self.q_linear(q)), split(self.k_linear(k)), split(self.v_linear(v))
        dots = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
        neg = -torch.finfo(dots.dtype).max
        if self.block is not None:
            dots = dots.masked_fill(self.block, neg)
        if mask is not None:
            dots = dots.masked_fill(mask, neg)
        out = torch.einsum("bhij,bhjd->bhid", dots.softmax(-1), v)
        return self.to_out(out.transpose(1, 2).reshape(b, -1, h * v.shape[-1]))


class LayerScale(nn.Module):
    def __init__(self, dim, index):
        super().__init__()
        eps = 0.1 if index <= 18 else (1e-5 if index <= 24 else 1e-6)
        self.scale = nn.Parameter(torch.full((1, 1, dim), eps))

    def forward(self, x):
        return x * self.scale


class FF(nn.Module):
    def __init__(self, dim, mult):
        super().__init__()
        self.dense_h_to_8h = nn.Linear(dim, dim * mult * 2)
        self.dense_4h_to_h = nn.Linear(dim * mult, dim)

    def forward(self, x):
        val, gate = self.dense_h_to_8h(x).chunk(2, dim=-1)
        return self.dense_4h_to_h(val * F.gelu(gate))


class Layer(nn.Module):
    def __init__(self, dim, heads, dim_head, mult, index, cross, block):
        super().__init__()
        self.atten_norm = nn.LayerNorm(dim)
        self.attention = Attn(dim, heads, dim_head, block)
        self.attention_scale = LayerScale(dim, index)
        self.cross = cross
        if cross:
            self.atten_norm_cond = nn.LayerNorm(dim)
            self.attention_cond = Attn(dim, heads, dim_head)
            self.attention_scale_cond = LayerScale(dim, index)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = FF(dim, mult)
        self.ff_scale = LayerScale(dim, index)

    def forward(self, x, mask, cond):
        h = self.atten_norm(x)
        x = x + self.attention_scale(self.attention(h, h, h, mask))
        if self.cross:
            h = self.atten_norm_cond(x)
            x = x + self.attention_scale_cond(self.attention_cond(h, cond, cond))
        return x + self.ff_scale(self.ff(self.ff_norm(x)))


class Stack(nn.Module):
    def __init__(self, cfg, depth, cross, types, grid):
        super().__init__()
        layers = []
        for i in range(depth):
            t = types[i % len(types)]
            block = nearby_block_mask(grid, grid, cfg.kernel_size).view(1, 1, grid * grid + 1, -1) if t == "nearby" else None
            layers.append(Layer(cfg.dim, cfg.heads, cfg.dim_head, cfg.ff_mult, i + 1, cross, block))
        self.layers = nn.ModuleList(layers)

    def forward(self, x, mask=None, cond=None):
        for layer in self.layers:
            x = layer(x, mask, cond)
        return x


class Axial(nn.Module):
    """Summed axial positional embedding with the old `weights_N` parameter names."""

    def __init__(self, dim, shape):
        super().__init__()
        self.shape = shape
        for i, s in enumerate(shape):
            ax = [1] * len(shape)
            ax[i] = s
            setattr(self, f"weights_{i}", nn.Parameter(torch.randn(1, *ax, dim)))

    def forward(self, x):
        b, t, d = x.shape
        embs = [getattr(self, f"weights_{i}").expand(b, *self.shape, d).reshape(b, -1, d)
                for i in range(len(self.shape))]
        return sum(embs)[:, :t]


class RefNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        g, gv = cfg.img_size // cfg.vae_patch_size, cfg.img_size // cfg.vit_patch_size
        self.encoder = TextEncoder(cfg.text_vocab_size, cfg.text_len, cfg.text_width, cfg.text_layers,
                                   cfg.text_heads, cfg.dim)
        self.vae_emb = nn.Embedding(cfg.vqvae_vocab_size, cfg.vae_emb_dim)
        self.image_emb = nn.Linear(cfg.vae_emb_dim, cfg.dim)
        self.patch_emb = nn.Conv2d(3, cfg.dim, cfg.vit_patch_size, stride=cfg.vit_patch_size)
        self.image_bos_emb = nn.Parameter(torch.randn(1, cfg.dim))
        self.image_msk_emb = nn.Parameter(torch.randn(1, cfg.dim))
        self.image_pos_emb_vae = Axial(cfg.dim, (1, g, g))
        self.image_pos_emb_vit = Axial(cfg.dim, (1, gv, gv))
        self.transformer_dec = Stack(cfg, cfg.dec_depth, True, cfg.attn_types_dec, g)
        self.transformer_enc = Stack(cfg, cfg.enc_depth, False, cfg.attn_types_enc, g)
        self.transformer_pth = Stack(cfg, cfg.enc_depth, False, cfg.attn_types_enc, gv)
        self.to_logits_img = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, cfg.vqvae_vocab_size))

    def forward(self, text, image_base, vae_mask, masked_image):
        """Official forward_: logits [B, N, V] and the hole-only cross-entropy.
        vae_mask [B, N] (1 = hole), masked_image NCHW."""
        b = text.shape[0]
        hole = vae_mask.eq(1).reshape(b, -1, 1)
        known = ~hole
        tokens_clip = self.encoder(text)
        image = image_base.view(b, -1)
        target = (image * hole.view(b, -1) - 100 * known.view(b, -1)).long()
        image_emb = self.image_emb(self.vae_emb(image)).view(b, -1, self.cfg.dim)
        image_emb = image_emb + self.image_pos_emb_vae(image_emb)
        raw_emb = self.patch_emb(masked_image)
        raw_emb = raw_emb.view(b, -1, self.cfg.dim) if self.cfg.pth_layout == "torch" else \
            raw_emb.flatten(2).transpose(1, 2)
        raw_emb = raw_emb + self.image_pos_emb_vit(raw_emb)
        tokens_dec = image_emb * hole + self.image_msk_emb * known
        tokens_dec = torch.cat((self.image_bos_emb.expand(b, -1, -1), tokens_dec), dim=1)
        tokens_enc = image_emb * known + self.image_msk_emb * hole
        n = tokens_dec.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool).triu(1).view(1, n, n).unsqueeze(1)
        enc_out = self.transformer_enc(tokens_enc)
        pth_out = self.transformer_pth(raw_emb)
        cond = torch.cat((enc_out, pth_out, tokens_clip), dim=-2)
        dec = self.transformer_dec(tokens_dec, causal, cond)
        logits = self.to_logits_img(dec[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), target)
        return logits, loss


# --- tests -----------------------------------------------------------------------------------------

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lip_jax.weights import mps2s as conv  # noqa: E402
from lip_jax.models import mps2s  # noqa: E402


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def _inputs(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = cfg.num_tokens
    tokens = torch.randint(0, cfg.vqvae_vocab_size, (b, n), generator=g)
    hole = torch.rand(b, n, generator=g) < 0.5
    hole[:, 0] = True  # at least one hole per row
    image = torch.rand(b, 3, cfg.img_size, cfg.img_size, generator=g) * 2 - 1
    text = torch.randint(1, cfg.text_vocab_size, (b, cfg.text_len), generator=g)
    text[:, -3:] = 0  # padding tokens are part of the condition
    return tokens, hole, image, text


def _randomize(net, seed=0):
    # LayerScale at its tiny init would hide most of each block: use O(1) random values everywhere.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim == 1 else 1.0) / max(1, p.shape[-1]) ** 0.5 * 2)


@pytest.mark.parametrize("layout", ["torch", "clean"])
def test_teacher_forced_logits_and_loss_match_torch(layout):
    cfg = dataclasses.replace(mps2s.MPSConfig.from_any("tiny"), pth_layout=layout)
    assert set(cfg.dec_layer_types()) == {"full", "nearby"} and cfg.kernel_size < cfg.grid[0]
    torch.manual_seed(0)
    net = RefNet(cfg).eval()
    _randomize(net)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    params = conv.mps2s_from_torch(state, cfg)
    tokens, hole, image, text = _inputs(cfg)
    with torch.no_grad():
        ref_logits, ref_loss = net(text, tokens, hole.int(), image)
    fwd = jax.jit(lambda p, *a: mps2s.MPS2S(cfg).apply({"params": p}, *a))
    logits = fwd(params, jnp.asarray(tokens.numpy()), jnp.asarray(hole.numpy()),
                 jnp.asarray(image.permute(0, 2, 3, 1).numpy()), jnp.asarray(text.numpy()))
    loss = mps2s.hole_loss(logits, jnp.asarray(tokens.numpy()), jnp.asarray(hole.numpy()))
    assert _rel(logits, ref_logits.numpy()) < 1e-4
    assert abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)) < 1e-4
    # the two pixel-view layouts give different models: the flag is not a no-op
    net.cfg = dataclasses.replace(cfg, pth_layout="clean" if layout == "torch" else "torch")
    with torch.no_grad():
        other_logits, _ = net(text, tokens, hole.int(), image)
    assert _rel(logits, other_logits.numpy()) > 1e-2


def test_nearby_mask_matches_padded_window_construction():
    for rows, k in [(8, 3), (6, 5), (5, 4), (4, 11), (7, 2)]:
        blocked = nearby_block_mask(rows, rows, k).numpy()
        q = np.arange(rows * rows + 1)[:, None]
        kk = np.arange(rows * rows + 1)[None, :]
        np.testing.assert_array_equal(np.asarray(mps2s.nearby_allowed(q, kk, (rows, rows), k)), ~blocked)
    # no wrap-around between rows: the last token of row 0 does not see the first of row 1 with k=1
    assert not bool(mps2s.nearby_allowed(np.array(8), np.array(9), (8, 8), 1))
