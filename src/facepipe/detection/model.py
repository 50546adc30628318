"""RetinaFace: backbone -> 3-level FPN -> SSH context modules -> per-level score/box/landmark heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facepipe.detection.backbones import build_backbone


def conv_bn(inp: int, oup: int, kernel: int, leaky: float, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(inp, oup, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(oup)]
    if relu:
        layers.append(nn.LeakyReLU(leaky, inplace=True))
    return nn.Sequential(*layers)


class FPN(nn.Module):
    """Top-down pyramid: 1x1 laterals, nearest upsampling, 3x3 merges."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int):
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.laterals = nn.ModuleList(conv_bn(c, out_channels, 1, leaky) for c in in_channels)
        self.merges = nn.ModuleList(conv_bn(out_channels, out_channels, 3, leaky) for _ in in_channels[:-1])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [lat(f) for lat, f in zip(self.laterals, feats)]
        for i in range(len(outs) - 2, -1, -1):
            up = F.interpolate(outs[i + 1], size=outs[i].shape[-2:], mode="nearest")
            outs[i] = self.merges[i](outs[i] + up)
        return outs


class SSH(nn.Module):
    """Single Stage Headless context module: parallel 3x3, 5x5 (two 3x3), 7x7 (three 3x3) branches."""

    def __init__(self, channels: int):
        super().__init__()
        assert channels % 4 == 0, "SSH width must be a multiple of 4"
        leaky = 0.1 if channels <= 64 else 0.0
        self.conv3 = conv_bn(channels, channels // 2, 3, leaky, relu=False)
        self.conv5_1 = conv_bn(channels, channels // 4, 3, leaky)
        self.conv5_2 = conv_bn(channels // 4, channels // 4, 3, leaky, relu=False)
        self.conv7_2 = conv_bn(channels // 4, channels // 4, 3, leaky)
        self.conv7_3 = conv_bn(channels // 4, channels // 4, 3, leaky, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c3 = self.conv3(x)
        c5_1 = self.conv5_1(x)
        c5 = self.conv5_2(c5_1)
        c7 = self.conv7_3(self.conv7_2(c5_1))
        return F.relu(torch.cat([c3, c5, c7], dim=1))


class Head(nn.Module):
    """1x1 conv predicting `per_anchor` values for each anchor of a level, flattened to (B, N, per_anchor)."""

    def __init__(self, channels: int, anchors: int, per_anchor: int):
        super().__init__()
        self.per_anchor = per_anchor
        self.conv = nn.Conv2d(channels, anchors * per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    """Outputs (boxes (B,N,4) offsets, logits (B,N,2), landmarks (B,N,10) offsets) over all priors."""

    def __init__(self, backbone: str = "mobilenet0.25", fpn_channels: int = 0, anchors_per_cell: int = 2):
        super().__init__()
        self.body, default_width = build_backbone(backbone)
        width = fpn_channels or default_width
        self.fpn = FPN(self.body.out_channels, width)
        self.ssh = nn.ModuleList(SSH(width) for _ in range(3))
        self.box_heads = nn.ModuleList(Head(width, anchors_per_cell, 4) for _ in range(3))
        self.class_heads = nn.ModuleList(Head(width, anchors_per_cell, 2) for _ in range(3))
        self.landmark_heads = nn.ModuleList(Head(width, anchors_per_cell, 10) for _ in range(3))

    def forward(self, x: torch.Tensor):
        feats = [ssh(f) for ssh, f in zip(self.ssh, self.fpn(self.body(x)))]
        boxes = torch.cat([h(f) for h, f in zip(self.box_heads, feats)], dim=1)
        logits = torch.cat([h(f) for h, f in zip(self.class_heads, feats)], dim=1)
        landmarks = torch.cat([h(f) for h, f in zip(self.landmark_heads, feats)], dim=1)
        return boxes, logits, landmarks


def build_model(cfg) -> RetinaFace:
    return RetinaFace(cfg.backbone, cfg.fpn_channels, cfg.anchors_per_cell)
