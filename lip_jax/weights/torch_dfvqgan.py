"""PyTorch reference of the official DF-VQGAN structure (NCHW), for the parity tests and
tools/bench_dfvqgan.py (needs the `torch` extra).

Same module names and parameter shapes as the official `config/dfvqgan.py`, so its state dict has
the official keys; the arithmetic follows the official forward passes step by step (multiplicative
masking, unbiased MaskGroupNorm statistics, -finfo.max attention fill).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def swish(x):
    return x * torch.sigmoid(x)


class MaskConv2d(nn.Module):
    def __init__(self, cin, cout, k, stride, padding):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding)

    def forward(self, x, mask, dmask, skip_mask=False):
        if skip_mask:
            return self.conv(x)
        m, dm = mask[:, None], dmask[:, None]
        return self.conv(x) * dm + self.conv(x * ~m) * ~dm


class MaskGroupNorm(nn.Module):
    def __init__(self, groups, channels, eps):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(1, channels, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x, mask=None):
        n_, c = x.shape[:2]
        g = x.reshape(n_, self.groups, -1)
        d = g.shape[-1]
        if mask is not None:
            mk = mask.reshape(n_, 1, -1).expand(n_, c, mask[0].numel()).reshape(n_, self.groups, -1)
            m = mk.sum(-1, keepdim=True).float()
            n = torch.full_like(m, d)
            mean = g.mean(-1, keepdim=True) * n / (n - m + self.eps)
            filled = g * ~mk + mean * mk
            var = filled.var(-1, keepdim=True) * (n - 1) / (n - m - 1 + self.eps)
        else:
            mean, var = g.mean(-1, keepdim=True), g.var(-1, keepdim=True)
        g = (g - mean) / (var + self.eps).sqrt()
        return (g.reshape(n_, c, -1) * self.weight + self.bias).reshape(x.shape)


class MaskNormalize(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = MaskGroupNorm(32, c, 1e-6)

    def forward(self, x, mask, skip_mask=False):
        if skip_mask:
            return self.norm(x)
        m = mask[:, None]
        return self.norm(x) * m + self.norm(x * ~m, mask) * ~m


def Normalize(c):
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class MaskResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = MaskNormalize(cin), MaskConv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = MaskNormalize(cout), MaskConv2d(cout, cout, 3, 1, 1)
        self.cin, self.cout = cin, cout
        if cin != cout:
            self.nin_shortcut = MaskConv2d(cin, cout, 1, 1, 0)

    def forward(self, x, mask, skip_mask=False):
        h = self.conv1(swish(self.norm1(x, mask, skip_mask)), mask, mask, skip_mask)
        h = self.conv2(swish(self.norm2(h, mask, skip_mask)), mask, mask, skip_mask)
        if self.cin != self.cout:
            x = self.nin_shortcut(x, mask, mask, skip_mask)
        return x + h


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = Normalize(cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = Normalize(cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.cin, self.cout = cin, cout
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x):
        h = self.conv2(swish(self.norm2(self.conv1(swish(self.norm1(x))))))
        return (self.nin_shortcut(x) if self.cin != self.cout else x) + h


def _attend(q, k, v, blocked=None):
    b, c, h, w = q.shape
    s = torch.bmm(q.reshape(b, c, h * w).permute(0, 2, 1), k.reshape(b, c, h * w)) * (int(c) ** -0.5)
    if blocked is not None:
        s = s.masked_fill(blocked, -torch.finfo(s.dtype).max)
    s = F.softmax(s, dim=2)
    return torch.bmm(v.reshape(b, c, h * w), s.permute(0, 2, 1)).reshape(b, c, h, w)


class MaskAttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = MaskNormalize(c)
        self.q, self.k, self.v, self.proj_out = (MaskConv2d(c, c, 1, 1, 0) for _ in range(4))

    def forward(self, x, mask, skip_mask=False):
        h = self.norm(x, mask, skip_mask)
        q, k, v = (f(h, mask, mask, skip_mask) for f in (self.q, self.k, self.v))
        blocked = None
        if not skip_mask:
            flat = mask.reshape(mask.shape[0], -1)
            blocked = flat[:, None, :] & ~flat[:, :, None]
        return x + self.proj_out(_attend(q, k, v, blocked), mask, mask, skip_mask)


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = Normalize(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        return x + self.proj_out(_attend(self.q(h), self.k(h), self.v(h)))


class MaskDownsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = MaskConv2d(c, c, 3, 2, 0)

    def forward(self, x, mask, dmask, skip_mask=False):
        x = F.pad(x, (0, 1, 0, 1))
        if not skip_mask:
            mask = F.pad(mask, (0, 1, 0, 1))
        return self.conv(x, mask, dmask, skip_mask)


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MaskEncoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, in_channels=3):
        super().__init__()
        self.nres, self.nrb = len(ch_mult), num_res_blocks
        self.conv_in = MaskConv2d(in_channels, ch, 3, 1, 1)
        in_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        cur = resolution
        for i in range(self.nres):
            d = nn.Module()
            d.block, d.attn = nn.ModuleList(), nn.ModuleList()
            bin_, bout = ch * in_mult[i], ch * ch_mult[i]
            for _ in range(num_res_blocks):
                d.block.append(MaskResnetBlock(bin_, bout))
                bin_ = bout
                if cur in attn_resolutions:
                    d.attn.append(MaskAttnBlock(bin_))
            if i != self.nres - 1:
                d.downsample = MaskDownsample(bin_)
                cur //= 2
            self.down.append(d)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = (
            MaskResnetBlock(bin_, bin_), MaskAttnBlock(bin_), MaskResnetBlock(bin_, bin_))
        self.norm_out = MaskNormalize(bin_)
        self.conv_out = MaskConv2d(bin_, z_channels, 3, 1, 1)

    def forward(self, x, mask, skip_mask=False):
        cur = None if skip_mask else mask
        hs, hms = [self.conv_in(x, mask, mask, skip_mask)], [cur]
        for i in range(self.nres):
            for j in range(self.nrb):
                h = self.down[i].block[j](hs[-1], cur, skip_mask)
                if len(self.down[i].attn):
                    h = self.down[i].attn[j](h, cur, skip_mask)
                hs.append(h)
                hms.append(cur)
            if i != self.nres - 1:
                dmask = None
                if not skip_mask:
                    k = 2 ** (i + 1)
                    pad = F.pad(mask, (0, k - 1, 0, k - 1))
                    dmask = F.max_pool2d(pad[:, None].float(), k, k)[:, 0].bool()
                hs.append(self.down[i].downsample(hs[-1], cur, dmask, skip_mask))
                hms.append(dmask)
                cur = dmask
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], cur, skip_mask), cur, skip_mask), cur, skip_mask)
        h = self.conv_out(swish(self.norm_out(h, cur, skip_mask)), cur, cur, skip_mask)
        return h, hs, hms


class MaskDecoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, out_ch=3):
        super().__init__()
        self.nres, self.nrb = len(ch_mult), num_res_blocks
        in_mult = (1,) + tuple(ch_mult)
        bin_ = ch * ch_mult[-1]
        cur = resolution // 2 ** (self.nres - 1)
        self.conv_in = nn.Conv2d(z_channels, bin_, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = (
            ResnetBlock(bin_, bin_), AttnBlock(bin_), ResnetBlock(bin_, bin_))
        self.up = nn.ModuleList()
        for i in reversed(range(self.nres)):
            u = nn.Module()
            u.block, u.attn = nn.ModuleList(), nn.ModuleList()
            bout = ch * in_mult[i]
            for j in range(num_res_blocks):
                if cur in attn_resolutions:
                    u.attn.append(AttnBlock(bin_))
                last = j == num_res_blocks - 1
                u.block.append(ResnetBlock(bin_, bout if last else bin_))
                if last:
                    bin_ = bout
            if i != 0:
                u.upsample = Upsample(bin_)
                cur *= 2
            self.up.insert(0, u)
        self.norm_out = Normalize(bin_)
        self.conv_out = nn.Conv2d(bin_, out_ch, 3, 1, 1)

    @staticmethod
    def _fuse(h, hs, hms):
        if hs is None or hms is None:
            return h, hs, hms
        m = hms[-1][:, None]
        return (hs[-1] * ~m + h * m + h) / 2, hs[:-1], hms[:-1]

    def forward(self, z, hs=None, hms=None):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i in reversed(range(self.nres)):
            for j in range(self.nrb):
                h_, hs, hms = self._fuse(h, hs, hms)
                if len(self.up[i].attn):
                    h_ = self.up[i].attn[j](h_)
                h = self.up[i].block[j](h_)
            if i != 0:
                h_, hs, hms = self._fuse(h, hs, hms)
                h = self.up[i].upsample(h_)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, n_e, e_dim, beta, legacy):
        super().__init__()
        self.e_dim, self.beta, self.legacy = e_dim, beta, legacy
        self.embedding = nn.Embedding(n_e, e_dim)

    def forward(self, z):
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.e_dim)
        w = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) + w.pow(2).sum(1) - 2 * flat @ w.t()
        idx = d.argmin(1)
        zq = self.embedding(idx).view(z.shape)
        a, b = torch.mean((zq.detach() - z) ** 2), torch.mean((zq - z.detach()) ** 2)
        loss = a + self.beta * b if self.legacy else self.beta * a + b
        zq = z + (zq - z).detach()
        return zq.permute(0, 3, 1, 2).contiguous(), loss, idx.view(z.shape[:3])


class DFVQGAN(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        arch = dict(ch=cfg["ch"], ch_mult=cfg["ch_mult"], num_res_blocks=cfg["num_res_blocks"],
                    attn_resolutions=cfg["attn_resolutions"], resolution=cfg["resolution"],
                    z_channels=cfg["z_channels"])
        self.encoder = MaskEncoder(**arch)
        self.decoder = MaskDecoder(**arch)
        self.quantize = VectorQuantizer(cfg["n_e"], cfg["e_dim"], cfg["beta"], cfg["legacy"])
        self.quant_conv = nn.Conv2d(cfg["z_channels"], cfg["e_dim"], 1)
        self.post_quant_conv = nn.Conv2d(cfg["e_dim"], cfg["z_channels"], 1)

    def encode(self, x, mask, skip_mask=False):
        h, hs, hms = self.encoder(x, mask, skip_mask)
        quant, loss, idx = self.quantize(self.quant_conv(h))
        return quant, loss, idx, hs, hms

    def decode(self, quant, hs=None, hms=None):
        return self.decoder(self.post_quant_conv(quant), hs, hms)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, including norm affines, so nothing is checked at its init value.

    The codebook gets unit-scale entries: the official +-1/n_e init makes the nearest code a
    near-tie, which is not what a trained model looks like.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embedding.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model
