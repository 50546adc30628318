"""Face embedding backbones: IResNet-18/34/50/100 (ArcFace's improved ResNet) and MobileFaceNet.

Both take a normalised RGB batch `(N, 3, S, S)` (see `faces_to_tensor`) and return `(N, D)`
un-normalised embeddings. `width` scales every channel count so tests and CPU runs can use a
narrow model with the same topology; the final feature-map side is derived from the input size,
so 56-64 px inputs work as well as the standard 112.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

IRESNET_LAYERS = {"iresnet18": [2, 2, 2, 2], "iresnet34": [3, 4, 6, 3],
                  "iresnet50": [3, 4, 14, 3], "iresnet100": [3, 13, 30, 3]}


def faces_to_tensor(faces_bgr: np.ndarray) -> torch.Tensor:
    """uint8 BGR `(N, H, W, 3)` -> float RGB `(N, 3, H, W)` in [-1, 1], the backbones' input."""
    x = torch.from_numpy(np.ascontiguousarray(faces_bgr[..., ::-1]))
    return x.permute(0, 3, 1, 2).float().sub_(127.5).div_(127.5)


def _side_after(size: int, halvings: int) -> int:
    # a 3x3 (or 1x1) stride-2 conv with padding 1 (or 0) gives ceil(size / 2)
    for _ in range(halvings):
        size = (size + 1) // 2
    return size


def _ch(channels: int, width: float) -> int:
    return max(8, int(round(channels * width / 8)) * 8)


class IBasicBlock(nn.Module):
    """BN-conv-BN-PReLU-conv-BN with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin, eps=1e-5),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5),
        )
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout, eps=1e-5))

    def forward(self, x):
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.body(x) + identity


class IResNet(nn.Module):
    def __init__(self, layers: list[int], input_size: int = 112, embedding_size: int = 512,
                 width: float = 1.0, dropout: float = 0.0):
        super().__init__()
        chans = [_ch(c, width) for c in (64, 64, 128, 256, 512)]
        self.stem = nn.Sequential(nn.Conv2d(3, chans[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(chans[0], eps=1e-5), nn.PReLU(chans[0]))
        stages = []
        cin = chans[0]
        for n, cout in zip(layers, chans[1:]):
            blocks = [IBasicBlock(cin, cout, 2)] + [IBasicBlock(cout, cout, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        side = _side_after(input_size, 4)
        # the BN-Dropout-FC-BN head of the ArcFace paper ("option E")
        self.head = nn.Sequential(nn.BatchNorm2d(cin, eps=1e-5), nn.Dropout(dropout), nn.Flatten(),
                                  nn.Linear(cin * side * side, embedding_size),
                                  nn.BatchNorm1d(embedding_size, eps=1e-5))
        _init(self)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


class _ConvBN(nn.Sequential):
    def __init__(self, cin, cout, k=1, s=1, p=0, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.PReLU(cout))
        super().__init__(*layers)


class _Bottleneck(nn.Module):
    """MobileNetV2 inverted residual (expand, depthwise, linear project) as in MobileFaceNet."""

    def __init__(self, cin, cout, stride, expansion):
        super().__init__()
        mid = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(_ConvBN(cin, mid), _ConvBN(mid, mid, 3, stride, 1, groups=mid),
                                  _ConvBN(mid, cout, act=False))

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileFaceNet(nn.Module):
    # (expansion, channels, repeats, stride) from Chen et al. 2018, table 1
    SETTINGS = [(2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)]

    def __init__(self, input_size: int = 112, embedding_size: int = 512, width: float = 1.0,
                 dropout: float = 0.0):
        super().__init__()
        c64 = _ch(64, width)
        layers = [_ConvBN(3, c64, 3, 2, 1), _ConvBN(c64, c64, 3, 1, 1, groups=c64)]
        cin = c64
        for t, c, n, s in self.SETTINGS:
            cout = _ch(c, width)
            for i in range(n):
                layers.append(_Bottleneck(cin, cout, s if i == 0 else 1, t))
                cin = cout
        c512 = _ch(512, width)
        layers.append(_ConvBN(cin, c512))
        self.features = nn.Sequential(*layers)
        side = _side_after(input_size, 4)
        # global depthwise conv: a learned weighting of each position instead of average pooling
        self.head = nn.Sequential(_ConvBN(c512, c512, side, 1, 0, groups=c512, act=False),
                                  nn.Dropout(dropout), nn.Flatten(),
                                  nn.Linear(c512, embedding_size, bias=False),
                                  nn.BatchNorm1d(embedding_size))
        _init(self)

    def forward(self, x):
        return self.head(self.features(x))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_backbone(name: str, input_size: int = 112, embedding_size: int = 512, width: float = 1.0,
                   dropout: float = 0.0) -> nn.Module:
    """The backbone called `name` (one of IRESNET_LAYERS or "mobilefacenet")."""
    if name in IRESNET_LAYERS:
        return IResNet(IRESNET_LAYERS[name], input_size, embedding_size, width, dropout)
    if name == "mobilefacenet":
        return MobileFaceNet(input_size, embedding_size, width, dropout)
    from facepipe.errors import ConfigError

    raise ConfigError(f"backbone {name!r} is unknown; choose one of {list(IRESNET_LAYERS) + ['mobilefacenet']}")
