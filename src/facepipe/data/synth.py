"""Synthetic faces, the embedded default dataset: identity folders for recognition, scenes for detection.

Faces are drawn procedurally with OpenCV. An identity is a fixed set of traits (head shape, eye,
brow, nose and mouth geometry, skin, hair and iris colour, hair style, ears, glasses, beard, a
mole); every image of it adds nuisance (roll, yaw as a feature shift, scale, expression, lighting
gradient and colour cast, blur, noise, partial occlusion). Skin and hair come from small palettes,
so many identities share colours and a model has to learn the geometry.

Output of `synthesize(cfg, out_dir)`:

    faces/<id>/<id>_<NNNN>.jpg        face_size px, landmarks near the ArcFace 112 template (LFW naming,
                                      numbers from 1)
    faces_eval/<id>/<id>_<NNNN>.jpg   held-out identities (never in faces/), for verification
    faces_pairs.txt                   LFW pairs.txt over faces_eval/ (folds, same then different pairs)
    detection/{train,val,test}/images/*.jpg + label.txt   RetinaFace/WIDER labels (facepipe.data.labels)
    preview.png                       a look at the faces and two annotated training scenes
    synth_report.json, manifest.json (last)

Everything is drawn from numpy Generators seeded per identity, image and scene, so the same
seed gives byte-identical files whatever the worker count or order.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facepipe.config import bounded, to_dict
from facepipe.errors import ConfigError
from facepipe.run_logger import NullLogger, RunLogger

# ArcFace/InsightFace 112x112 alignment template: left eye, right eye, nose, mouth left, mouth right.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)

# Small palettes (BGR) so colour alone cannot tell identities apart.
SKIN = [(189, 214, 240), (160, 190, 228), (125, 165, 210), (95, 135, 185), (70, 100, 150), (50, 70, 110)]
HAIR = [(25, 25, 30), (30, 50, 80), (45, 85, 140), (95, 170, 215), (150, 150, 155), (40, 60, 150)]
IRIS = [(30, 60, 100), (150, 110, 60), (80, 120, 60)]
FRAMES = [(20, 20, 20), (40, 70, 110), (60, 170, 210), (170, 170, 170)]

SPLITS = ("train", "val", "test")
_SUB = 16  # cv2 fixed-point shift 4: sub-pixel drawing keeps small faces smooth


@dataclass
class SynthConfig:
    """How much synthetic data to draw and how hard it is."""

    identities: int = bounded(50, low=1, help="identities in faces/ (recognition training)")
    images: int = bounded(20, low=1, help="images per identity")
    scenes: int = bounded(100, low=0, help="detection scenes over train/val/test")
    seed: int = 0
    face_size: int = bounded(112, low=32, high=512, help="side of the face crops in faces/")
    scene_size: int = bounded(320, low=64, high=4096, help="typical scene side; each varies +-20%")
    faces_per_scene_min: int = bounded(1, low=0, high=64)
    faces_per_scene_max: int = bounded(6, low=1, high=64)
    min_face: int = bounded(10, low=4, help="smallest face box side in scenes (px)")
    max_face_fraction: float = bounded(0.6, low=0.05, high=1.0, help="largest face box / scene side")
    landmark_min_face: int = bounded(16, low=0,
                                     help="faces smaller than this get -1 landmarks, as WIDER's tiny faces")
    val_fraction: float = bounded(0.1, low=0.0, high=0.9)
    test_fraction: float = bounded(0.1, low=0.0, high=0.9)
    negative_fraction: float = bounded(0.05, low=0.0, high=1.0, help="scenes with no face")
    nuisance: float = bounded(1.0, low=0.0, high=2.0, help="scales pose/lighting/blur/noise/occlusion")
    occlusion: float = bounded(0.15, low=0.0, high=1.0, help="chance of an occluder per face")
    eval_identities: int = bounded(10, low=0, help="held-out identities in faces_eval/ for pairs")
    pair_folds: int = bounded(10, low=1)
    pairs_per_fold: int = bounded(20, low=1, help="same-identity pairs per fold (and as many different)")
    jpeg_quality: int = bounded(95, low=30, high=100)
    workers: int = bounded(1, low=1, high=64, help="processes; output does not depend on it")

    def validate(self) -> None:
        if self.faces_per_scene_min > self.faces_per_scene_max:
            raise ConfigError(f"SynthConfig.faces_per_scene_min ({self.faces_per_scene_min}) is above "
                              f"faces_per_scene_max ({self.faces_per_scene_max})")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("SynthConfig.val_fraction + test_fraction must be below 1 "
                              f"(got {self.val_fraction} + {self.test_fraction})")
        if self.min_face > self.max_face_fraction * self.scene_size * 0.8:
            raise ConfigError(f"SynthConfig.min_face {self.min_face} does not fit scenes of "
                              f"{self.scene_size} px with max_face_fraction {self.max_face_fraction}")


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


def _apply(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ M[:, :2].T + M[:, 2]


def _fill(img, M, pts, color) -> None:
    p = np.round(_apply(M, pts) * _SUB).astype(np.int32)
    cv2.fillPoly(img, [p], color, cv2.LINE_AA, shift=4)


def _stroke(img, M, pts, color, width) -> None:
    """A polyline `width` template units wide (at least one pixel)."""
    scale = math.sqrt(abs(np.linalg.det(M[:, :2])))
    p = np.round(_apply(M, pts) * _SUB).astype(np.int32)
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
        _fill(img, M, np.array([[56 - ident.head_w - vol, top + 12], [56 + ident.head_w + vol, top + 12],
                                [56 + ident.head_w + vol * 0.6, ident.head_cy + ident.head_h + 8],
                                [56 - ident.head_w - vol * 0.6, ident.head_cy + ident.head_h + 8]]), hair)
    if ident.hair_style == 5:
        _fill(img, M, _ellipse(56, ident.head_cy - 8, ident.head_w + vol + 3, ident.head_h * 0.8 + vol), hair)
    _fill(img, M, np.array([[56 - ident.head_w * 0.45, ident.head_cy + 20], [56 + ident.head_w * 0.45,
                            ident.head_cy + 20], [56 + ident.head_w * 0.55, 140], [56 - ident.head_w * 0.55, 140]]),
          dark_skin)
    for side in (-1, 1):
        if side * yaw > 0.55:  # the far ear hides behind the head
            continue
        ex = 56 + side * (ident.head_w * (1 - 0.15 * side * yaw) - 1)
        _fill(img, M, _ellipse(ex, ident.eye_y + 6 + pose.pitch, ident.ear * 0.6, ident.ear * 1.3), dark_skin)
    _fill(img, M, outline, skin)

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
        _fill(img, M, np.concatenate([sideburn, outer, [[56 + ident.head_w + 1, ident.eye_y - 4]],
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
            _fill(img, M, _ellipse(cx, cy, w, ident.eye_h, tilt, n=20), (235, 240, 242))
            r = min(ident.eye_h * 0.95, w * 0.5)
            _fill(img, M, _ellipse(cx + 1.2 * yaw, cy, r, r, n=14), iris)
            _fill(img, M, _ellipse(cx + 1.2 * yaw, cy, r * 0.45, r * 0.45, n=10), (15, 15, 20))
            _stroke(img, M, _ellipse(cx, cy, w, ident.eye_h, tilt, n=12, t0=math.pi, t1=2 * math.pi),
                    (35, 35, 45), 0.8)
        bl = ident.brow_len * (1 - 0.3 * max(0.0, side * yaw))
        by = cy - ident.eye_h - ident.brow_gap
        band = _band(cx - bl / 2, cx + bl / 2, by, ident.brow_thick / 2, ident.brow_arch)
        a = math.radians(ident.brow_angle * side)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        _fill(img, M, (band - [cx, by]) @ rot.T + [cx, by], _shade(hair, 0.8))

    # Nose.
    nx, ny = lm[2]
    bridge_x = 56 + 5.0 * yaw
    nose_dark = _shade(skin, 0.7)
    if ident.nose_style == 0:
        _stroke(img, M, np.array([[bridge_x - 1, ident.eye_y + 2], [nx - 2 + 2 * yaw, ny - 2]]), nose_dark, 1.0)
    elif ident.nose_style == 1:
        _fill(img, M, np.array([[bridge_x, ident.eye_y + 3], [nx + ident.nose_w * 0.6, ny],
                                [nx - ident.nose_w * 0.6, ny]]), _shade(skin, 0.88))
    else:
        _stroke(img, M, _ellipse(nx, ny - 2, ident.nose_w * 0.6, 2.5, n=10, t0=0.2, t1=math.pi - 0.2),
                nose_dark, 1.0)
    for side in (-1, 1):
        _fill(img, M, _ellipse(nx + side * ident.nose_w * 0.4, ny + 0.5, 1.3, 0.9, n=8), _shade(skin, 0.45))

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
            _fill(img, M, np.concatenate([[[mx + half + 2, my - 2]], low, [[mx - half - 2, my - 2]]]), beard)
    if ident.beard in (1, 2):
        _fill(img, M, _band(mx - half - 1, mx + half + 1, my - 4, 1.8, 1.5), beard)
    curve = ident.mouth_curve + pose.smile
    lip = _shade(skin, 0.75, (0, -10, 25))
    if pose.mouth_open > 0:
        _fill(img, M, _ellipse(mx, my + pose.mouth_open / 2, half * 0.8, pose.mouth_open, n=16), (40, 30, 60))
    _fill(img, M, _band(lm[3, 0], lm[4, 0], my, ident.lip_thick / 2, curve), lip)

    if ident.glasses:
        frame = FRAMES[ident.frame]
        r = ident.eye_w + 3
        for k in (0, 1):
            _stroke(img, M, _ellipse(lm[k, 0], lm[k, 1], r, r * 0.8, n=20), frame, 1.2)
        _stroke(img, M, np.array([[lm[0, 0] + r, lm[0, 1]], [lm[1, 0] - r, lm[1, 1]]]), frame, 1.2)
    if ident.mole is not None:
        _fill(img, M, _ellipse(56 + ident.mole[0] + 3 * yaw, ident.mole[1], 1.2, 1.2, n=8), (40, 50, 70))
    return {"landmarks": _apply(M, lm), "outline": _apply(M, outline)}


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


# --------------------------------------------------------------------------- backgrounds and pixel effects

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


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping src points onto dst."""
    sm, dm = src.mean(0), dst.mean(0)
    s, d = src - sm, dst - dm
    a = (s * d).sum()
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()
    n = (s ** 2).sum()
    c, si = a / n, b / n
    R = np.array([[c, -si], [si, c]])
    return np.concatenate([R, (dm - R @ sm)[:, None]], 1)


def _jitter(angle_deg: float, scale: float, shift: tuple[float, float], center: float) -> np.ndarray:
    a = math.radians(angle_deg)
    R = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    t = np.array([center, center]) - R @ np.array([center, center]) + np.array(shift)
    return np.concatenate([R, t[:, None]], 1)


def _compose(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A after B, both 2x3."""
    return np.concatenate([A[:, :2] @ B[:, :2], (A[:, :2] @ B[:, 2] + A[:, 2])[:, None]], 1)


# --------------------------------------------------------------------------- recognition crops

def render_face_image(ident: FaceIdentity, rng: np.random.Generator, size: int = 112,
                      nuisance: float = 1.0, occlusion: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """One aligned face crop (BGR uint8, size x size) and its 5 landmarks in crop pixels."""
    pose = random_pose(rng, nuisance)
    img = background(rng, size, size, shapes=int(rng.integers(0, 4)))
    # Align this shot's landmarks onto the template (what a real aligner does), then jitter it.
    template = ARCFACE_TEMPLATE * (size / 112.0)
    align = similarity(face_landmarks(ident, pose) * (size / 112.0), template)
    jit = _jitter(rng.normal(0, 5 * nuisance), 1 + rng.normal(0, 0.04 * nuisance),
                  tuple(rng.normal(0, 1.5 * nuisance * size / 112, 2)), size / 2)
    M = _compose(jit, _compose(align, np.diag([size / 112.0, size / 112.0, 1])[:2]))
    geo = draw_face(img, M, ident, pose)
    if rng.random() < occlusion:
        poly, color = occluder(rng)
        _fill(img, M, poly, color)
    img = light(img, rng, nuisance)
    degrade(img, rng, nuisance, scale=size / 112.0)
    return img, geo["landmarks"]


def _identity_name(index: int, total: int) -> str:
    return f"id{index:0{max(4, len(str(total - 1)))}d}"


def _write_jpeg(path: Path, img: np.ndarray, quality: int) -> None:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {path}")
    path.write_bytes(buf.tobytes())


def _identity_task(args) -> int:
    cfg, out_root, index, total, held_out = args
    ident = make_identity(identity_rng(cfg.seed, index, held_out))
    name = _identity_name(index, total)
    folder = Path(out_root) / name
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(cfg.images):
        rng = np.random.default_rng([cfg.seed, 4 if held_out else 1, index, k])
        img, _ = render_face_image(ident, rng, cfg.face_size, cfg.nuisance, cfg.occlusion)
        _write_jpeg(folder / f"{name}_{k + 1:04d}.jpg", img, cfg.jpeg_quality)
    return cfg.images


# --------------------------------------------------------------------------- detection scenes

def _overlap(a, b) -> float:
    """Intersection over the smaller box: a small face hidden inside a big one counts as overlap."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter / smaller if smaller > 0 else 0.0


def render_scene(cfg: SynthConfig, index: int):
    """One detection scene: (BGR image, list of FaceLabel). Deterministic in (seed, index)."""
    from facepipe.data.labels import OCCLUDED, VISIBLE, FaceLabel

    rng = np.random.default_rng([cfg.seed, 2, index])
    width = int(cfg.scene_size * rng.uniform(0.8, 1.2))
    height = int(cfg.scene_size * rng.uniform(0.8, 1.2))
    img = background(rng, height, width, shapes=int(rng.integers(3, 16)))
    if rng.random() < cfg.negative_fraction:
        count = 0
    else:
        count = int(rng.integers(cfg.faces_per_scene_min, cfg.faces_per_scene_max + 1))
    largest = cfg.max_face_fraction * min(width, height)
    placed = []  # (box xyxy, landmarks, outline, occluder polygon or None, blur)
    for _ in range(count):
        ident = make_identity(rng)
        pose = random_pose(rng, cfg.nuisance)
        for _try in range(20):
            side = math.exp(rng.uniform(math.log(cfg.min_face), math.log(largest)))
            angle = rng.normal(0, 10 * cfg.nuisance)
            # Map the head outline's width onto `side` pixels; place it fully inside the scene.
            scale = side / (2 * ident.head_w)
            a = math.radians(angle)
            R = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            outline = head_outline(ident) @ R.T
            lo, hi = outline.min(0), outline.max(0)
            span = hi - lo
            if span[0] >= width - 2 or span[1] >= height - 2:
                continue
            tx = rng.uniform(-lo[0] + 1, width - hi[0] - 1)
            ty = rng.uniform(-lo[1] + 1, height - hi[1] - 1)
            box = (lo[0] + tx, lo[1] + ty, hi[0] + tx, hi[1] + ty)
            if all(_overlap(box, p[0]) < 0.25 for p in placed):
                break
        else:
            continue
        M = np.concatenate([R, np.array([[tx], [ty]])], 1)
        # Draw into a padded region, light and blur it there, then paste back.
        x0, y0 = max(0, int(box[0] - side * 0.5)), max(0, int(box[1] - side * 0.5))
        x1, y1 = min(width, int(box[2] + side * 0.5) + 1), min(height, int(box[3] + side * 0.5) + 1)
        before = img[y0:y1, x0:x1].copy()
        region = before.copy()
        Mr = M - np.array([[0, 0, x0], [0, 0, y0]])
        geo = draw_face(region, Mr, ident, pose)
        occ = None
        if rng.random() < cfg.occlusion:
            poly, color = occluder(rng)
            _fill(region, Mr, poly, color)
            occ = _apply(M, poly).astype(np.float32)
        # Lighting and blur belong to the face, not its surroundings: blend through a soft mask.
        mask = (region != before).any(2).astype(np.float32)
        region = light(region, rng, cfg.nuisance * 0.7)
        blur = degrade(region, rng, cfg.nuisance, scale=side / 70.0)
        mask = cv2.GaussianBlur(mask, (0, 0), max(0.6, blur * side / 70.0))[..., None]
        img[y0:y1, x0:x1] = (region * mask + before * (1 - mask) + 0.5).astype(np.uint8)
        placed.append((box, geo["landmarks"] + [x0, y0], geo["outline"] + [x0, y0], occ, blur))
    degrade(img, rng, cfg.nuisance * 0.5)

    faces = []
    for i, (box, lms, _outline, occ, blur) in enumerate(placed):
        w, h = box[2] - box[0], box[3] - box[1]
        xywh = np.round([box[0], box[1], w, h], 2)
        if max(w, h) < cfg.landmark_min_face:
            faces.append(FaceLabel(box=xywh, blur=round(min(blur, 1.0), 2)))
            continue
        # Occluded: under this face's occluder or under a face drawn later.
        covers = [p[2].astype(np.float32) for p in placed[i + 1:]] + ([occ] if occ is not None else [])
        flags = np.array([OCCLUDED if any(cv2.pointPolygonTest(c, (float(x), float(y)), False) >= 0
                                          for c in covers) else VISIBLE for x, y in lms])
        faces.append(FaceLabel(box=xywh, landmarks=np.round(lms, 2), landmark_flags=flags,
                               blur=round(min(blur, 1.0), 2)))
    return img, faces


def split_of(cfg: SynthConfig, index: int) -> str:
    """Scenes 0.. go to train, then val, then test; a split asked for gets at least one scene
    when there are three or more (an empty val/ would stop a detector's evaluation)."""
    def share(fraction: float) -> int:
        n = int(round(cfg.scenes * fraction))
        return max(n, 1) if fraction > 0 and cfg.scenes >= 3 else n

    n_val, n_test = share(cfg.val_fraction), share(cfg.test_fraction)
    n_train = cfg.scenes - n_val - n_test
    return "train" if index < n_train else ("val" if index < n_train + n_val else "test")


def _scene_task(args):
    cfg, det_root, index = args
    img, faces = render_scene(cfg, index)
    name = f"scene_{index:06d}.jpg"
    _write_jpeg(Path(det_root) / split_of(cfg, index) / "images" / name, img, cfg.jpeg_quality)
    return index, name, faces


# --------------------------------------------------------------------------- pairs

def write_pairs(path: Path, names: list[str], images: int, folds: int, per_fold: int, seed: int) -> int:
    """LFW pairs.txt over held-out identities: `folds<TAB>per_fold`, then per fold `per_fold`
    same-identity lines `name i j` and `per_fold` different-identity lines `n1 i n2 j` (1-based)."""
    rng = np.random.default_rng([seed, 5])
    lines = [f"{folds}\t{per_fold}"]
    for _ in range(folds):
        for _ in range(per_fold):
            name = names[int(rng.integers(len(names)))]
            i, j = rng.choice(images, 2, replace=False) + 1
            lines.append(f"{name}\t{i}\t{j}")
        for _ in range(per_fold):
            a, b = rng.choice(len(names), 2, replace=False)
            lines.append(f"{names[a]}\t{int(rng.integers(images)) + 1}\t{names[b]}\t{int(rng.integers(images)) + 1}")
    path.write_text("\n".join(lines) + "\n")
    return folds * per_fold * 2


# --------------------------------------------------------------------------- preview

LANDMARK_COLOURS = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255)]


def annotate(image: np.ndarray, faces) -> np.ndarray:
    """Boxes (green) and landmarks (left eye blue, right eye red, nose green, mouth magenta/yellow)."""
    out = image.copy()
    for face in faces:
        x, y, w, h = face.box
        cv2.rectangle(out, (int(x), int(y)), (int(round(x + w)), int(round(y + h))), (0, 255, 0), 1)
        if face.landmarks is not None:
            for (lx, ly), flag, colour in zip(face.landmarks, face.landmark_flags, LANDMARK_COLOURS):
                if flag >= 0:
                    cv2.circle(out, (int(lx), int(ly)), 2, colour, -1 if flag == 0 else 1)
    return out


def write_preview(out_dir: Path, labelled_train: list, per_row: int = 8, tile: int = 64) -> Path:
    """`preview.png`: a grid of faces (one identity per row) above annotated training scenes."""
    rows = []
    for person in sorted((out_dir / "faces").iterdir())[:per_row]:
        tiles = [cv2.resize(cv2.imread(str(f)), (tile, tile), interpolation=cv2.INTER_AREA)
                 for f in sorted(person.iterdir())[:per_row]]
        tiles += [np.zeros((tile, tile, 3), np.uint8)] * (per_row - len(tiles))
        rows.append(np.concatenate(tiles, 1))
    width = per_row * tile
    scene_h = width // 2
    scenes = []
    for item in labelled_train[:2]:
        img = annotate(cv2.imread(str(out_dir / "detection" / "train" / "images" / item.path)), item.faces)
        scale = min(scene_h / img.shape[0], (width // 2) / img.shape[1])
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        canvas = np.zeros((scene_h, width // 2, 3), np.uint8)
        canvas[:img.shape[0], :img.shape[1]] = img
        scenes.append(canvas)
    if scenes:
        scenes += [np.zeros((scene_h, width // 2, 3), np.uint8)] * (2 - len(scenes))
        rows.append(np.concatenate(scenes, 1))
    path = out_dir / "preview.png"
    if rows:
        cv2.imwrite(str(path), np.concatenate(rows, 0))
    return path


# --------------------------------------------------------------------------- the step

_OUTPUTS = ("faces", "faces_eval", "faces_pairs.txt", "detection", "synth_report.json", "preview.png")


def _prepare(out_dir: Path) -> None:
    """Start from a clean folder; an earlier synth output is replaced, anything else is refused."""
    from facepipe.manifest import MANIFEST

    if out_dir.exists() and any(out_dir.iterdir()):
        try:
            kind = json.loads((out_dir / MANIFEST).read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        ours = kind == "synth" or (out_dir / "synth_report.json").exists() or \
            {p.name for p in out_dir.iterdir()} <= set(_OUTPUTS) | {MANIFEST + ".tmp"}
        if not ours:
            raise ConfigError(f"{out_dir}: not empty and not an earlier synth output; "
                              "choose an empty or new folder")
        (out_dir / MANIFEST).unlink(missing_ok=True)  # incomplete until rewritten
        for name in _OUTPUTS:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _run(tasks, fn, workers: int, progress):
    if workers <= 1:
        for t in tasks:
            result = fn(t)
            progress.update(1)
            yield result
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        for result in pool.imap(fn, tasks, chunksize=max(1, len(tasks) // (workers * 8) or 1)):
            progress.update(1)
            yield result


def synthesize(cfg: SynthConfig, out_dir: str | Path, logger: RunLogger = NullLogger()) -> dict:
    """Draw the synthetic dataset into out_dir (see the module docstring); returns the report."""
    from facepipe.data.labels import LabelledImage, write_labels
    from facepipe.manifest import write_manifest
    from facepipe.progress import Progress

    out_dir = Path(out_dir)
    _prepare(out_dir)
    t0 = time.monotonic()

    faces_root = out_dir / "faces"
    tasks = [(cfg, str(faces_root), i, cfg.identities, False) for i in range(cfg.identities)]
    eval_root = out_dir / "faces_eval"
    tasks += [(cfg, str(eval_root), i, cfg.eval_identities, True) for i in range(cfg.eval_identities)]
    with Progress(len(tasks), "synth faces", unit="identity") as progress:
        face_images = sum(_run(tasks, _identity_task, cfg.workers, progress))
    t_faces = time.monotonic() - t0

    pairs = 0
    if cfg.eval_identities >= 2 and cfg.images >= 2:
        names = [_identity_name(i, cfg.eval_identities) for i in range(cfg.eval_identities)]
        pairs = write_pairs(out_dir / "faces_pairs.txt", names, cfg.images, cfg.pair_folds,
                            cfg.pairs_per_fold, cfg.seed)

    det_root = out_dir / "detection"
    for split in SPLITS:
        (det_root / split / "images").mkdir(parents=True, exist_ok=True)
    labelled: dict[str, list] = {s: [] for s in SPLITS}
    sizes, occluded, no_landmarks = [], 0, 0
    with Progress(cfg.scenes, "synth scenes", unit="scene") as progress:
        for index, name, faces in _run([(cfg, str(det_root), i) for i in range(cfg.scenes)],
                                       _scene_task, cfg.workers, progress):
            labelled[split_of(cfg, index)].append(LabelledImage(name, faces))
            for f in faces:
                sizes.append(max(f.box[2], f.box[3]))
                no_landmarks += not f.has_landmarks
                occluded += int((f.landmark_flags == 1.0).sum())
    for split in SPLITS:
        write_labels(det_root / split / "label.txt", labelled[split])
    seconds = time.monotonic() - t0

    report = {
        "identities": cfg.identities, "images_per_identity": cfg.images, "face_images": cfg.identities * cfg.images,
        "face_size": cfg.face_size, "eval_identities": cfg.eval_identities,
        "eval_images": cfg.eval_identities * cfg.images, "pairs": pairs,
        "pairs_root": "faces_eval" if pairs else None,
        "scenes": {s: len(labelled[s]) for s in SPLITS},
        "faces_in_scenes": {s: sum(len(i.faces) for i in labelled[s]) for s in SPLITS},
        "negative_scenes": sum(not i.faces for s in SPLITS for i in labelled[s]),
        "faces_without_landmarks": no_landmarks, "occluded_landmarks": occluded,
        "face_box_px": ({"min": round(float(np.min(sizes)), 2), "median": round(float(np.median(sizes)), 2),
                         "max": round(float(np.max(sizes)), 2)} if sizes else None),
        "landmark_order": ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"],
        "config": to_dict(cfg),
    }
    report["config"].pop("workers")  # the files do not depend on it; keep the report byte-identical
    write_preview(out_dir, labelled["train"])
    (out_dir / "synth_report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    write_manifest(out_dir, kind="synth", extra={"seed": cfg.seed})
    logger.log_metrics({"face_images": face_images, "scenes": cfg.scenes,
                        "scene_faces": len(sizes), "seconds": seconds,
                        "faces_per_s": (face_images / t_faces) if t_faces > 0 else 0.0})
    logger.log_artifact(out_dir / "synth_report.json")
    return {**report, "seconds": round(seconds, 3),
            "faces_per_s": round(face_images / t_faces, 1) if t_faces > 0 else None}
