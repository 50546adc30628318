"""Pixel nuisance for synthetic images: procedural backgrounds, lighting, blur and noise."""

from __future__ import annotations

import math

import cv2
import numpy as np

from facepipe.data.synth_face import SKIN


def background(rng: np.random.Generator, height: int, width: int, shapes: int) -> np.ndarray:
    """A procedural background: gradient or smooth noise or stripes, then random shapes."""
    kind = rng.integers(4)
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if kind == 0:
        t = np.linspace(0, 1, width if rng.random() < 0.5 else height, dtype=np.float32)
        ramp = c1[None, :] * (1 - t[:, None]) + c2[None, :] * t[:, None]
        img = np.broadcast_to(ramp[None] if len(t) == width else ramp[:, None], (height, width, 3))
        img = np.ascontiguousarray(img, dtype=np.uint8)
    elif kind == 1:
        cells = rng.integers(0, 256, (int(rng.integers(2, 8)), int(rng.integers(2, 8)), 3)).astype(np.uint8)
        img = cv2.resize(cells, (width, height), interpolation=cv2.INTER_CUBIC)
    elif kind == 2:
        img = np.empty((height, width, 3), np.uint8)
        img[:] = c1
        period = int(rng.integers(6, 40))
        for x in range(0, width + height, period * 2):
            cv2.line(img, (x, 0), (x - height, height), tuple(int(v) for v in c2), period // 2)
    else:
        img = np.empty((height, width, 3), np.uint8)
        img[:] = c1
    for _ in range(shapes):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(width)), int(rng.integers(height))
        s = int(rng.integers(4, max(5, min(width, height) // 3)))
        pick = rng.integers(4)
        if pick == 0:
            cv2.rectangle(img, (x, y), (x + s, y + int(rng.integers(4, s + 1))), color, -1)
        elif pick == 1:
            cv2.circle(img, (x, y), s // 2, color, -1, cv2.LINE_AA)
        elif pick == 2:
            cv2.line(img, (x, y), (int(rng.integers(width)), int(rng.integers(height))), color,
                     int(rng.integers(1, 5)), cv2.LINE_AA)
        else:  # skin-coloured blob without features: a hard negative for the detector
            skin = tuple(int(v) for v in SKIN[rng.integers(len(SKIN))])
            cv2.ellipse(img, (x, y), (s // 3 + 2, s // 2 + 2), float(rng.uniform(0, 180)), 0, 360, skin, -1,
                        cv2.LINE_AA)
    return img


def light(img: np.ndarray, rng: np.random.Generator, nuisance: float) -> np.ndarray:
    """Global brightness, colour cast and a linear lighting gradient in a random direction."""
    h, w = img.shape[:2]
    a = rng.uniform(0, 2 * math.pi)
    strength = rng.uniform(0, 0.6) * nuisance
    ramp = (np.arange(w, dtype=np.float32)[None, :] - w / 2) * math.cos(a) / w \
        + (np.arange(h, dtype=np.float32)[:, None] - h / 2) * math.sin(a) / h
    gain = (1 + rng.normal(0, 0.15 * nuisance)) * (1 + strength * ramp)
    cast = (1 + rng.normal(0, 0.05 * nuisance, 3)).astype(np.float32)
    out = img.astype(np.float32) * gain[..., None] * cast
    return np.clip(out, 0, 255).astype(np.uint8)


def degrade(img: np.ndarray, rng: np.random.Generator, nuisance: float, scale: float = 1.0) -> float:
    """Blur and noise in place; returns the blur sigma in units of the face size (0 = sharp)."""
    sigma = 0.0
    if rng.random() < 0.35 * nuisance:
        sigma = float(rng.uniform(0.4, 1.6) * nuisance)
        px = sigma * scale
        if px > 0.3:
            img[:] = cv2.GaussianBlur(img, (0, 0), px)
    noise_sd = rng.uniform(0, 7) * nuisance
    if noise_sd > 0.5:
        noise = rng.standard_normal(img.shape, dtype=np.float32)
        noise *= noise_sd
        noise += img
        np.clip(noise, 0, 255, out=noise)
        img[:] = noise.astype(np.uint8)
    return sigma
