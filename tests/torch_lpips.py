"""PyTorch reference of LPIPS-VGG as taming / the official `config/dfvqgan.py` compute it (NCHW).

Written for the parity tests without torchvision: `features` is a Sequential laid out like
torchvision's `vgg16().features` (same indices, so keys `features.N.weight`), and the heads are
`linK.model` = Sequential(Dropout, Conv1x1 without bias), keys `linK.model.1.weight` as in the
lpips package's and taming's `vgg.pth`.
"""

import torch
import torch.nn as nn

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
TAPS = (3, 8, 15, 22, 29)  # index of the ReLU after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3
CHANNELS = (64, 128, 256, 512, 512)


def vgg16_features() -> nn.Sequential:
    layers, cin = [], 3
    for v in CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers)


class NetLinLayer(nn.Module):
    def __init__(self, cin, use_dropout=True):
        super().__init__()
        layers = [nn.Dropout()] if use_dropout else []
        layers.append(nn.Conv2d(cin, 1, 1, stride=1, padding=0, bias=False))
        self.model = nn.Sequential(*layers)


class LPIPS(nn.Module):
    def __init__(self, use_dropout=True):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-.030, -.088, -.188])[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor([.458, .448, .450])[None, :, None, None], persistent=False)
        self.features = vgg16_features()
        for k, ch in enumerate(CHANNELS):
            setattr(self, f"lin{k}", NetLinLayer(ch, use_dropout))

    def taps(self, x):
        out = []
        for i, layer in enumerate(self.features[: TAPS[-1] + 1]):
            x = layer(x)
            if i in TAPS:
                out.append(x)
        return out

    @staticmethod
    def normalize_tensor(x, eps=1e-10):
        return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)

    def forward(self, x, y):
        fx = self.taps((x - self.shift) / self.scale)
        fy = self.taps((y - self.shift) / self.scale)
        val = 0
        for k in range(len(CHANNELS)):
            d = (self.normalize_tensor(fx[k]) - self.normalize_tensor(fy[k])) ** 2
            val = val + getattr(self, f"lin{k}").model(d).mean([2, 3], keepdim=True)
        return val


def randomize_(model: LPIPS, seed: int) -> LPIPS:
    """Default torch init for the VGG convs (seeded) and random non-negative heads."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("features") and name.endswith("weight"):
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif name.startswith("features"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            else:
                p.copy_(torch.rand(p.shape, generator=g) * 0.2)
    return model
