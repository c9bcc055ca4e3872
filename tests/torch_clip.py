"""PyTorch reference with OpenAI CLIP's module structure and state-dict names (written for the
parity tests; sequence-first layout like OpenAI's), scriptable with torch.jit.script."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x, mask: torch.Tensor | None = None):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Stack(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([Block(width, heads) for _ in range(layers)])

    def forward(self, x, mask: torch.Tensor | None = None):
        for blk in self.resblocks:
            x = blk(x, mask)
        return x


class Vision(nn.Module):
    def __init__(self, resolution: int, patch: int, width: int, layers: int, heads: int, out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * 0.1)
        self.positional_embedding = nn.Parameter(torch.randn((resolution // patch) ** 2 + 1, width) * 0.1)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Stack(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, out) * width ** -0.5)

    def forward(self, x):  # NCHW, normalised
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [B, patches, width]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.context_length = c["context_length"]
        self.visual = Vision(c["image_resolution"], c["vision_patch_size"], c["vision_width"], c["vision_layers"],
                             c["vision_heads"], c["embed_dim"])
        w = c["transformer_width"]
        self.transformer = Stack(w, c["transformer_layers"], c["transformer_heads"])
        self.token_embedding = nn.Embedding(c["vocab_size"], w)
        self.positional_embedding = nn.Parameter(torch.randn(c["context_length"], w) * 0.1)
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Parameter(torch.randn(w, c["embed_dim"]) * w ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    @torch.jit.export
    def encode_image(self, image):
        return self.visual(image)

    @torch.jit.export
    def encode_text(self, ids):
        n = self.context_length
        causal = torch.full((n, n), float("-inf")).triu(1)
        x = self.token_embedding(ids) + self.positional_embedding
        x = self.ln_final(self.transformer(x.transpose(0, 1), causal).transpose(0, 1))
        return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ self.text_projection

    def forward(self, image, ids):
        img = self.encode_image(image)
        txt = self.encode_text(ids)
        img = img / torch.linalg.vector_norm(img, dim=-1, keepdim=True)
        txt = txt / torch.linalg.vector_norm(txt, dim=-1, keepdim=True)
        return self.logit_scale.exp() * img @ txt.t()


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial LayerNorm affine and biases so a transposed or swapped tensor shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()
