"""MTCNN (Zhang et al. 2016) as a teacher: face boxes and 5 landmarks on real photos, no training.

facepipe's own detector learns landmarks from labels, and real photos come without them. MTCNN's
three small networks (P-Net 12 px proposals, R-Net 24 px refinement, O-Net 48 px boxes + landmarks)
were trained on WIDER FACE and CelebA; their weights ship inside the `facenet-pytorch` wheel
(MIT licence), which facepipe installs with `--no-deps` for those three files only: the package's
code is never imported (it needs torchvision). The networks and the cascade below are facepipe's
own, written from the paper's description and the weights' layer shapes.

`MtcnnDetector` has the interface of `facepipe.detection.infer.Detector` (`detect`,
`detect_batch`, `digest`; rows `x1 y1 x2 y2 score` + 5 landmarks as x, y pairs, image pixels), so
`FaceAligner`, `pack --detector mtcnn` and the teacher labels (`label-faces --teacher mtcnn`) take it
where they take a trained detector. Landmark order is RetinaFace's: left eye, right eye, nose,
left and right mouth corners (image left).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facepipe.detection.box_coding import nms
from facepipe.errors import ConfigError

# The name that stands for this detector wherever a detector model.pt path is accepted.
NAME = "mtcnn"
WEIGHTS_PACKAGE = "facenet-pytorch"
# P-Net / R-Net / O-Net score thresholds and the image pyramid's step, as published.
THRESHOLDS = (0.6, 0.7, 0.7)
PYRAMID_FACTOR = 0.709
PNET_STRIDE, PNET_CELL = 2, 12


def weights_dir() -> Path:
    """The folder holding pnet.pt, rnet.pt and onet.pt inside the installed facenet-pytorch wheel."""
    from importlib import metadata

    try:
        dist = metadata.distribution(WEIGHTS_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"the MTCNN teacher needs the weights shipped in the {WEIGHTS_PACKAGE} wheel: "
                          f"pip install --no-deps {WEIGHTS_PACKAGE}==2.6.0 (`make setup` does)") from None
    folder = Path(dist.locate_file("facenet_pytorch/data"))
    missing = [n for n in ("pnet.pt", "rnet.pt", "onet.pt") if not (folder / n).is_file()]
    if missing:
        raise ConfigError(f"{WEIGHTS_PACKAGE} is installed but {folder} lacks {', '.join(missing)}")
    return folder


class _Stage(nn.Module):
    """A conv + PReLU trunk (optionally pooled after each conv) and, for R/O-Net, dense layers."""

    def _conv(self, name: str, cin: int, cout: int, k: int) -> None:
        setattr(self, name, nn.Conv2d(cin, cout, k))
        setattr(self, "prelu" + name[4:], nn.PReLU(cout))

    def _act(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        return getattr(self, "prelu" + layer[-1])(getattr(self, layer)(x))

    @staticmethod
    def _flatten(x: torch.Tensor) -> torch.Tensor:
        # The weights were converted from a (W, H, C)-ordered framework: flatten in that order.
        return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(_Stage):
    def __init__(self):
        super().__init__()
        self._conv("conv1", 3, 10, 3)
        self._conv("conv2", 10, 16, 3)
        self._conv("conv3", 16, 32, 3)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = F.max_pool2d(self._act(x, "conv1"), 2, 2, ceil_mode=True)
        x = self._act(self._act(x, "conv2"), "conv3")
        return torch.softmax(self.conv4_1(x), 1)[:, 1], self.conv4_2(x)


class RNet(_Stage):
    def __init__(self):
        super().__init__()
        self._conv("conv1", 3, 28, 3)
        self._conv("conv2", 28, 48, 3)
        self._conv("conv3", 48, 64, 2)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x):
        x = F.max_pool2d(self._act(x, "conv1"), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self._act(x, "conv2"), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(self._flatten(self._act(x, "conv3"))))
        return torch.softmax(self.dense5_1(x), 1)[:, 1], self.dense5_2(x)


class ONet(_Stage):
    def __init__(self):
        super().__init__()
        self._conv("conv1", 3, 32, 3)
        self._conv("conv2", 32, 64, 3)
        self._conv("conv3", 64, 64, 3)
        self._conv("conv4", 64, 128, 2)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = F.max_pool2d(self._act(x, "conv1"), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self._act(x, "conv2"), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self._act(x, "conv3"), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(self._flatten(self._act(x, "conv4"))))
        return torch.softmax(self.dense6_1(x), 1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares about their centres (the next stage's input is square)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + (w - side) / 2
    out[:, 1] = boxes[:, 1] + (h - side) / 2
    out[:, 2], out[:, 3] = out[:, 0] + side, out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    out[:, :4] = boxes[:, :4] + offsets[:, :4] * np.stack([w, h, w, h], 1)
    return out


def _crops(image: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """(K, 3, size, size) patches under `boxes`, zero outside the image, area-resized."""
    _, h, w = image.shape
    out = []
    for x1, y1, x2, y2 in np.round(boxes[:, :4]).astype(int):
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
        patch = image.new_zeros((3, y2 - y1, x2 - x1))
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if sx2 > sx1 and sy2 > sy1:
            patch[:, sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = image[:, sy1:sy2, sx1:sx2]
        out.append(F.interpolate(patch[None], size=(size, size), mode="area"))
    return torch.cat(out)


class MtcnnDetector:
    """The three-stage cascade on one image at a time; faces from `min_face` pixels up."""

    def __init__(self, min_face: int = 20, thresholds=THRESHOLDS, factor: float = PYRAMID_FACTOR):
        folder = weights_dir()
        self.nets = []
        digest = hashlib.sha256(NAME.encode())
        for name, net in (("pnet", PNet()), ("rnet", RNet()), ("onet", ONet())):
            path = folder / f"{name}.pt"
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            self.nets.append(net.eval())
            digest.update(path.read_bytes())
        self.digest = digest.hexdigest()
        self.min_face, self.thresholds, self.factor = min_face, tuple(thresholds), factor

    @classmethod
    def load(cls, spec: str = NAME, device: str = "cpu") -> "MtcnnDetector":
        if device != "cpu":
            raise ConfigError(f"the MTCNN teacher runs on the CPU only, got device {device!r}")
        return cls()

    def _proposals(self, image: torch.Tensor) -> np.ndarray:
        """P-Net over the pyramid: (K, 9) boxes x1 y1 x2 y2 score + 4 offsets, NMS-merged."""
        pnet = self.nets[0]
        _, h, w = image.shape
        scale, side, found = PNET_CELL / self.min_face, min(h, w) * PNET_CELL / self.min_face, []
        while side >= PNET_CELL:
            resized = F.interpolate(image[None], size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            probs, offsets = pnet(resized)
            ys, xs = np.nonzero(probs[0].numpy() >= self.thresholds[0])
            if len(ys):
                cells = np.stack([xs, ys], 1).astype(np.float32)
                boxes = np.concatenate([np.floor((PNET_STRIDE * cells + 1) / scale),
                                        np.floor((PNET_STRIDE * cells + PNET_CELL) / scale),
                                        probs[0].numpy()[ys, xs, None], offsets[0].numpy()[:, ys, xs].T], 1)
                found.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
            scale, side = scale * self.factor, side * self.factor
        if not found:
            return np.zeros((0, 9), np.float32)
        boxes = np.concatenate(found)
        return boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]

    @torch.no_grad()
    def detect(self, image_bgr: np.ndarray, score_threshold: float = 0.5, nms_threshold: float = 0.4,
               scales=(1.0,)) -> np.ndarray:
        """(K, 15) faces: box, O-Net score, landmarks; best first. `nms_threshold` and `scales` are
        taken for the Detector interface: the cascade has its own (0.7 per stage, its pyramid)."""
        if image_bgr is None or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            raise ValueError(f"expected an (H,W,3) BGR image, got shape {getattr(image_bgr, 'shape', None)}")
        image = (torch.from_numpy(np.ascontiguousarray(image_bgr[:, :, ::-1])).permute(2, 0, 1).float()
                 - 127.5) * 0.0078125
        empty = np.zeros((0, 15), np.float32)
        boxes = self._proposals(image)
        if not len(boxes):
            return empty
        boxes = _square(_regress(boxes[:, :5], boxes[:, 5:9]))
        scores, offsets = self.nets[1](_crops(image, boxes, 24))
        keep = scores.numpy() > self.thresholds[1]
        boxes, offsets = boxes[keep], offsets.numpy()[keep]
        if not len(boxes):
            return empty
        boxes[:, 4] = scores.numpy()[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = _square(_regress(boxes[pick], offsets[pick]))
        scores, offsets, points = (t.numpy() for t in self.nets[2](_crops(image, boxes, 48)))
        keep = scores > max(self.thresholds[2], score_threshold)
        boxes, offsets, points = boxes[keep], offsets[keep], points[keep]
        if not len(boxes):
            return empty
        boxes[:, 4] = scores[keep]
        w, h = boxes[:, 2:3] - boxes[:, 0:1], boxes[:, 3:4] - boxes[:, 1:2]
        landmarks = np.stack([boxes[:, 0:1] + w * points[:, :5], boxes[:, 1:2] + h * points[:, 5:]], 2)
        boxes = _regress(boxes, offsets)
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, by_min=True)
        rows = np.concatenate([boxes[pick, :5], landmarks[pick].reshape(-1, 10)], 1)
        return rows[np.argsort(-rows[:, 4])].astype(np.float32)

    def detect_batch(self, images: list[np.ndarray], score_threshold: float = 0.5, nms_threshold: float = 0.4,
                     scales=(1.0,)) -> list[np.ndarray]:
        return [self.detect(im, score_threshold, nms_threshold, scales) for im in images]
