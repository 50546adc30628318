"""The procedural face model of the synthetic dataset: identity traits, per-shot pose, drawing one face.

Coordinates are in the 112 px ArcFace template frame; `draw_face` maps them into an image with a
2x3 similarity, so the same identity can be drawn as an aligned crop or anywhere in a scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Small palettes (BGR) so colour alone cannot tell identities apart.
SKIN = [(189, 214, 240), (160, 190, 228), (125, 165, 210), (95, 135, 185), (70, 100, 150), (50, 70, 110)]
HAIR = [(25, 25, 30), (30, 50, 80), (45, 85, 140), (95, 170, 215), (150, 150, 155), (40, 60, 150)]
IRIS = [(30, 60, 100), (150, 110, 60), (80, 120, 60)]
FRAMES = [(20, 20, 20), (40, 70, 110), (60, 170, 210), (170, 170, 170)]

_SUB = 16  # cv2 fixed-point shift 4: sub-pixel drawing keeps small faces smooth


# --------------------------------------------------------------------------- identities

@dataclass
class FaceIdentity:
    """Traits that stay fixed across all images of one person (units: the 112 px template frame)."""

    skin: int
    hair: int
    iris: int
    head_w: float
    head_h: float
    head_cy: float
    jaw: float
    chin: float
    ear: float
    hair_style: int
    hairline: float
    hair_volume: float
    part: float
    eye_dx: float
    eye_y: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    brow_gap: float
    brow_len: float
    brow_thick: float
    brow_angle: float
    brow_arch: float
    nose_y: float
    nose_w: float
    nose_style: int
    mouth_y: float
    mouth_w: float
    lip_thick: float
    mouth_curve: float
    glasses: int
    frame: int
    beard: int
    mole: tuple[float, float] | None


def make_identity(rng: np.random.Generator) -> FaceIdentity:
    u = rng.uniform
    eye_y = u(47, 55)
    return FaceIdentity(
        skin=int(rng.integers(len(SKIN))), hair=int(rng.integers(len(HAIR))), iris=int(rng.integers(len(IRIS))),
        head_w=u(29, 38), head_h=u(40, 50), head_cy=u(60, 66), jaw=u(0.0, 0.35), chin=u(0.0, 1.0),
        ear=u(4, 8), hair_style=int(rng.integers(6)), hairline=u(26, 38), hair_volume=u(2, 9),
        part=u(-1, 1), eye_dx=u(14.5, 21), eye_y=eye_y, eye_w=u(5, 8.5), eye_h=u(2.4, 4.4),
        eye_tilt=u(-12, 12), brow_gap=u(5.5, 11), brow_len=u(9, 15), brow_thick=u(1.2, 3.6),
        brow_angle=u(-14, 14), brow_arch=u(-1, 4), nose_y=u(eye_y + 15, eye_y + 25), nose_w=u(3.5, 9.5),
        nose_style=int(rng.integers(3)), mouth_y=u(86, 97), mouth_w=u(10, 17.5), lip_thick=u(1.2, 4.0),
        mouth_curve=u(-3, 3), glasses=int(rng.random() < 0.2), frame=int(rng.integers(len(FRAMES))),
        beard=int(rng.choice(4, p=[0.7, 0.1, 0.12, 0.08])),
        mole=(u(-24, 24), u(55, 95)) if rng.random() < 0.25 else None,
    )


def identity_rng(seed: int, index: int, held_out: bool = False) -> np.random.Generator:
    return np.random.default_rng([seed, 3 if held_out else 0, index])


# --------------------------------------------------------------------------- drawing primitives

def _ellipse(cx, cy, ax, ay, angle=0.0, n=28, t0=0.0, t1=2 * math.pi) -> np.ndarray:
    t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * math.pi - 1e-9)
    x, y = ax * np.cos(t), ay * np.sin(t)
    a = math.radians(angle)
    return np.stack([cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)], 1)


def transform_points(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ M[:, :2].T + M[:, 2]


def fill_shape(img, M, pts, color) -> None:
    p = np.round(transform_points(M, pts) * _SUB).astype(np.int32)
    cv2.fillPoly(img, [p], color, cv2.LINE_AA, shift=4)


def _stroke(img, M, pts, color, width) -> None:
    """A polyline `width` template units wide (at least one pixel)."""
    scale = math.sqrt(abs(np.linalg.det(M[:, :2])))
    p = np.round(transform_points(M, pts) * _SUB).astype(np.int32)
    cv2.polylines(img, [p], False, color, max(1, int(round(width * scale))), cv2.LINE_AA, shift=4)


def _band(x0, x1, y_mid, half_thick, bend, n=12) -> np.ndarray:
    """A curved band (eyebrow, lip): centre line y = y_mid + bend * (1 - s^2), tapered ends."""
    s = np.linspace(-1, 1, n)
    x = x0 + (s + 1) / 2 * (x1 - x0)
    y = y_mid - bend * (1 - s ** 2)
    t = half_thick * (0.35 + 0.65 * np.sqrt(1 - s ** 2))
    return np.concatenate([np.stack([x, y - t], 1), np.stack([x[::-1], (y + t)[::-1]], 1)])


def _shade(color, factor, add=(0, 0, 0)) -> tuple:
    return tuple(float(min(255, max(0, c * factor + a))) for c, a in zip(color, add))


# --------------------------------------------------------------------------- one face

@dataclass
class Pose:
    """Per-image nuisance that changes the drawing itself (the rest is applied to pixels)."""

    yaw: float = 0.0       # -1..1: inner features slide sideways, far eye narrows
    pitch: float = 0.0     # template units: features slide up/down
    smile: float = 0.0     # added to mouth curvature
    mouth_open: float = 0.0
    blink: bool = False
    shade: float = 1.0     # skin brightness of this shot


def random_pose(rng: np.random.Generator, nuisance: float) -> Pose:
    return Pose(yaw=float(np.clip(rng.normal(0, 0.35 * nuisance), -0.9, 0.9)),
                pitch=float(rng.normal(0, 1.5 * nuisance)),
                smile=float(rng.normal(0, 1.2 * nuisance)),
                mouth_open=float(rng.uniform(1, 4) if rng.random() < 0.15 * nuisance else 0.0),
                blink=bool(rng.random() < 0.04 * nuisance),
                shade=float(1 + rng.normal(0, 0.06 * nuisance)))


def head_outline(ident: FaceIdentity, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    s, c = np.sin(t), np.cos(t)
    low = np.clip(s, 0, None)
    x = 56 + ident.head_w * c * (1 - ident.jaw * low ** 2)
    y = ident.head_cy + ident.head_h * s * (1 + 0.06 * ident.chin * low ** 6)
    return np.stack([x, y], 1)


def face_landmarks(ident: FaceIdentity, pose: Pose) -> np.ndarray:
    """The 5 landmarks in the template frame for this identity and pose (image-left first)."""
    dx_eye, dx_nose, dx_mouth = 5.0 * pose.yaw, 9.0 * pose.yaw, 6.0 * pose.yaw
    ey, p = ident.eye_y + pose.pitch, pose.pitch
    narrow = 1 - 0.25 * abs(pose.yaw)  # eye distance shrinks with yaw
    return np.array([
        [56 + dx_eye - ident.eye_dx * narrow, ey],
        [56 + dx_eye + ident.eye_dx * narrow, ey],
        [56 + dx_nose, ident.nose_y + p],
        [56 + dx_mouth - ident.mouth_w * narrow, ident.mouth_y + p * 0.8],
        [56 + dx_mouth + ident.mouth_w * narrow, ident.mouth_y + p * 0.8],
    ])


def draw_face(img: np.ndarray, M: np.ndarray, ident: FaceIdentity, pose: Pose) -> dict:
    """Draw one face mapped by the 2x3 similarity M (template frame -> image); return its geometry.

    Returns `landmarks` (5,2) and `outline` (head polygon) in image pixels.
    """
    skin = _shade(SKIN[ident.skin], pose.shade)
    hair = _shade(HAIR[ident.hair], pose.shade)
    dark_skin = _shade(skin, 0.8)
    lm = face_landmarks(ident, pose)
    outline = head_outline(ident)
    yaw = pose.yaw
    top = ident.head_cy - ident.head_h
    vol = ident.hair_volume

    # Behind the head: long or curly hair, neck, ears.
    if ident.hair_style == 4:
        fill_shape(img, M, np.array([[56 - ident.head_w - vol, top + 12], [56 + ident.head_w + vol, top + 12],
                                [56 + ident.head_w + vol * 0.6, ident.head_cy + ident.head_h + 8],
                                [56 - ident.head_w - vol * 0.6, ident.head_cy + ident.head_h + 8]]), hair)
    if ident.hair_style == 5:
        fill_shape(img, M, _ellipse(56, ident.head_cy - 8, ident.head_w + vol + 3, ident.head_h * 0.8 + vol), hair)
    fill_shape(img, M, np.array([[56 - ident.head_w * 0.45, ident.head_cy + 20], [56 + ident.head_w * 0.45,
                            ident.head_cy + 20], [56 + ident.head_w * 0.55, 140], [56 - ident.head_w * 0.55, 140]]),
          dark_skin)
    for side in (-1, 1):
        if side * yaw > 0.55:  # the far ear hides behind the head
            continue
        ex = 56 + side * (ident.head_w * (1 - 0.15 * side * yaw) - 1)
        fill_shape(img, M, _ellipse(ex, ident.eye_y + 6 + pose.pitch, ident.ear * 0.6, ident.ear * 1.3), dark_skin)
    fill_shape(img, M, outline, skin)

    # Hair on top: an outer arc above the head and a hairline (parted, straight or fringe).
    if ident.hair_style != 0:
        hl = ident.hairline + (14 if ident.hair_style == 3 else 0)
        outer = _ellipse(56, ident.head_cy, ident.head_w + vol * 0.5, ident.head_h + vol, n=24,
                         t0=math.pi * 0.95, t1=math.pi * 2.05)
        xs = np.linspace(56 + ident.head_w + 1, 56 - ident.head_w - 1, 14)
        if ident.hair_style == 3:  # fringe with a jagged edge
            ys = hl + np.where(np.arange(14) % 2 == 0, 0.0, -3.0)
        else:
            ys = hl + 4 * ident.part * (xs - 56) / ident.head_w + 6 * ((xs - 56) / ident.head_w) ** 2
        sideburn = np.array([[56 - ident.head_w - 1, ident.eye_y - 4]])
        fill_shape(img, M, np.concatenate([sideburn, outer, [[56 + ident.head_w + 1, ident.eye_y - 4]],
                                      np.stack([xs, ys], 1)]), hair)

    # Eyes, brows (features slide with yaw; the far side narrows).
    iris = IRIS[ident.iris]
    for k, side in ((0, -1), (1, 1)):
        cx, cy = lm[k]
        w = ident.eye_w * (1 - 0.35 * max(0.0, side * yaw))
        tilt = ident.eye_tilt * side
        if pose.blink:
            _stroke(img, M, _ellipse(cx, cy, w, ident.eye_h * 0.5, tilt, n=10, t0=0.1, t1=math.pi - 0.1),
                    (40, 40, 50), 0.9)
        else:
            fill_shape(img, M, _ellipse(cx, cy, w, ident.eye_h, tilt, n=20), (235, 240, 242))
            r = min(ident.eye_h * 0.95, w * 0.5)
            fill_shape(img, M, _ellipse(cx + 1.2 * yaw, cy, r, r, n=14), iris)
            fill_shape(img, M, _ellipse(cx + 1.2 * yaw, cy, r * 0.45, r * 0.45, n=10), (15, 15, 20))
            _stroke(img, M, _ellipse(cx, cy, w, ident.eye_h, tilt, n=12, t0=math.pi, t1=2 * math.pi),
                    (35, 35, 45), 0.8)
        bl = ident.brow_len * (1 - 0.3 * max(0.0, side * yaw))
        by = cy - ident.eye_h - ident.brow_gap
        band = _band(cx - bl / 2, cx + bl / 2, by, ident.brow_thick / 2, ident.brow_arch)
        a = math.radians(ident.brow_angle * side)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        fill_shape(img, M, (band - [cx, by]) @ rot.T + [cx, by], _shade(hair, 0.8))

    # Nose.
    nx, ny = lm[2]
    bridge_x = 56 + 5.0 * yaw
    nose_dark = _shade(skin, 0.7)
    if ident.nose_style == 0:
        _stroke(img, M, np.array([[bridge_x - 1, ident.eye_y + 2], [nx - 2 + 2 * yaw, ny - 2]]), nose_dark, 1.0)
    elif ident.nose_style == 1:
        fill_shape(img, M, np.array([[bridge_x, ident.eye_y + 3], [nx + ident.nose_w * 0.6, ny],
                                [nx - ident.nose_w * 0.6, ny]]), _shade(skin, 0.88))
    else:
        _stroke(img, M, _ellipse(nx, ny - 2, ident.nose_w * 0.6, 2.5, n=10, t0=0.2, t1=math.pi - 0.2),
                nose_dark, 1.0)
    for side in (-1, 1):
        fill_shape(img, M, _ellipse(nx + side * ident.nose_w * 0.4, ny + 0.5, 1.3, 0.9, n=8), _shade(skin, 0.45))

    # Beard and moustache (under the mouth), then the mouth.
    mx = (lm[3, 0] + lm[4, 0]) / 2
    my = (lm[3, 1] + lm[4, 1]) / 2
    half = (lm[4, 0] - lm[3, 0]) / 2
    beard = _shade(hair, 0.9)
    if ident.beard in (2, 3):
        low = outline[outline[:, 1] > my - (6 if ident.beard == 2 else -2)]
        if ident.beard == 3:
            low = low[np.abs(low[:, 0] - 56) < half + 3]
        if len(low) >= 3:
            fill_shape(img, M, np.concatenate([[[mx + half + 2, my - 2]], low, [[mx - half - 2, my - 2]]]), beard)
    if ident.beard in (1, 2):
        fill_shape(img, M, _band(mx - half - 1, mx + half + 1, my - 4, 1.8, 1.5), beard)
    curve = ident.mouth_curve + pose.smile
    lip = _shade(skin, 0.75, (0, -10, 25))
    if pose.mouth_open > 0:
        fill_shape(img, M, _ellipse(mx, my + pose.mouth_open / 2, half * 0.8, pose.mouth_open, n=16), (40, 30, 60))
    fill_shape(img, M, _band(lm[3, 0], lm[4, 0], my, ident.lip_thick / 2, curve), lip)

    if ident.glasses:
        frame = FRAMES[ident.frame]
        r = ident.eye_w + 3
        for k in (0, 1):
            _stroke(img, M, _ellipse(lm[k, 0], lm[k, 1], r, r * 0.8, n=20), frame, 1.2)
        _stroke(img, M, np.array([[lm[0, 0] + r, lm[0, 1]], [lm[1, 0] - r, lm[1, 1]]]), frame, 1.2)
    if ident.mole is not None:
        fill_shape(img, M, _ellipse(56 + ident.mole[0] + 3 * yaw, ident.mole[1], 1.2, 1.2, n=8), (40, 50, 70))
    return {"landmarks": transform_points(M, lm), "outline": transform_points(M, outline)}


def occluder(rng: np.random.Generator) -> tuple[np.ndarray, tuple]:
    """A random occluder in the template frame (sunglasses band, mask, hand or object) and its colour."""
    kind = rng.integers(4)
    color = tuple(float(c) for c in rng.integers(0, 256, 3))
    if kind == 0:  # dark glasses over both eyes
        y = rng.uniform(46, 56)
        return np.array([[22, y - 6], [90, y - 6], [90, y + 6], [22, y + 6]]), (20, 20, 25)
    if kind == 1:  # mask over the lower face
        y = rng.uniform(70, 82)
        return np.array([[22, y], [90, y], [84, 108], [28, 108]]), color
    if kind == 2:  # hand/object from one side
        side = rng.choice([-1, 1])
        x0 = 56 + side * rng.uniform(0, 20)
        y0 = rng.uniform(50, 95)
        return _ellipse(x0 + side * 25, y0, 28, rng.uniform(10, 18), rng.uniform(-30, 30)), color
    cx, cy = rng.uniform(20, 92), rng.uniform(40, 100)
    return _ellipse(cx, cy, rng.uniform(8, 18), rng.uniform(8, 18), rng.uniform(0, 180)), color
