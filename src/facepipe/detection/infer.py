"""`Detector`: load a trained RetinaFace `model.pt` and find faces (boxes, scores, 5 landmarks) in BGR images.

Rows are `[x1, y1, x2, y2, score, lx1, ly1, ..., lx5, ly5]` in image pixels; landmark order is left
eye, right eye, nose, left mouth corner, right mouth corner ("left" = image left). NMS is done in
NumPy because torchvision (and its `nms`) does not load beside the CPU torch wheel.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from facepipe.detection.anchors import prior_boxes
from facepipe.detection.augment import MEAN_BGR
from facepipe.detection.box_coding import decode_boxes, decode_landmarks, nms
from facepipe.errors import DataError

# Candidates kept before / after NMS per image (the reference's top_k / keep_top_k).
PRE_NMS_TOP_K = 5000
POST_NMS_TOP_K = 750


def load_detector(spec: str | Path, device: str = "cpu"):
    """A detector from a train-detection model.pt path, or the MTCNN teacher for the name `mtcnn`."""
    from facepipe.detection import mtcnn

    if str(spec) == mtcnn.NAME:
        return mtcnn.MtcnnDetector.load(device=device)
    return Detector.load(str(spec), device=device)


def load_detector_checkpoint(path: str | Path) -> dict:
    """A detector model.pt as a dict, with a clear error for a missing or wrong file."""
    from facepipe.training.checkpoint import load_torch_file

    path = Path(path)
    if not path.is_file():
        raise DataError("detector model not found (expected a model.pt from train-detection)", path=path)
    blob = load_torch_file(path, "detector model.pt")
    if blob.get("kind") != "detector":
        kind = blob.get("kind")
        raise DataError(f"expected a detector model.pt (kind 'detector'), found kind {kind!r}", path=path)
    return blob


def model_from_checkpoint(blob: dict):
    from facepipe.config import from_dict
    from facepipe.detection.config import DetectionTrainConfig
    from facepipe.detection.model import build_model

    cfg = from_dict(DetectionTrainConfig, blob["config"], source="model.pt config")
    model = build_model(cfg)
    model.load_state_dict(blob["state_dict"])
    return model.eval(), cfg


def fuse_conv_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Fold each BatchNorm that directly follows a conv (in a Sequential) into the conv, in place.

    Inference only (eval-mode statistics); removes a third of the memory passes of MobileNet.
    """
    from torch import nn

    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, bias=True).to(conv.weight.device)
            fused.weight.data = conv.weight.detach() * scale.reshape(-1, 1, 1, 1)
            bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
            fused.bias.data = (bias - bn.running_mean) * scale + bn.bias.detach()
            module[i], module[i + 1] = fused, nn.Identity()
    return model


class Detector:
    def __init__(self, model, cfg, device: str = "cpu", digest: str = ""):
        import copy

        # A fused copy: the caller's model (e.g. one still training) is left untouched.
        fused = fuse_conv_bn(copy.deepcopy(model).eval())
        memory_format = torch.channels_last if getattr(cfg, "channels_last", False) else torch.contiguous_format
        self.model = fused.to(device).to(memory_format=memory_format)
        self.memory_format = memory_format
        self.cfg, self.device, self.digest = cfg, device, digest
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Detector":
        from facepipe.manifest import sha256_file

        model, cfg = model_from_checkpoint(load_detector_checkpoint(path))
        return cls(model, cfg, device=device, digest=sha256_file(path))

    def priors(self, height: int, width: int) -> torch.Tensor:
        key = (height, width)
        if key not in self._priors:
            self._priors[key] = prior_boxes(height, width, self.cfg.min_sizes, self.cfg.steps).to(self.device)
        return self._priors[key]

    @torch.no_grad()
    def _forward(self, images: list[np.ndarray], scale: float):
        """Run resized images as one padded batch; per image (boxes, scores, landmarks) in original pixels."""
        import cv2

        resized = []
        for im in images:
            if im is None or im.ndim != 3 or im.shape[2] != 3:
                raise DataError(f"expected a BGR image of shape (H, W, 3), got "
                                f"{None if im is None else im.shape}")
            if scale != 1.0:
                h, w = im.shape[:2]
                im = cv2.resize(im, (max(1, round(w * scale)), max(1, round(h * scale))),
                                interpolation=cv2.INTER_LINEAR)
            resized.append(im)
        stride = max(self.cfg.steps)
        height = math.ceil(max(im.shape[0] for im in resized) / stride) * stride
        width = math.ceil(max(im.shape[1] for im in resized) / stride) * stride
        batch = np.zeros((len(resized), 3, height, width), np.float32)
        for b, im in enumerate(resized):
            batch[b, :, :im.shape[0], :im.shape[1]] = (im.astype(np.float32) - MEAN_BGR).transpose(2, 0, 1)
        inputs = torch.from_numpy(batch).to(self.device).contiguous(memory_format=self.memory_format)
        box_p, logit_p, lm_p = self.model(inputs)
        priors = self.priors(height, width)
        var = self.cfg.variances
        frame = torch.tensor([width, height], dtype=torch.float32, device=self.device)
        boxes = decode_boxes(box_p.float(), priors, var) * frame.repeat(2) / scale
        landmarks = decode_landmarks(lm_p.float(), priors, var) * frame.repeat(5) / scale
        scores = torch.softmax(logit_p.float(), dim=-1)[..., 1]
        return [(boxes[b].cpu().numpy(), scores[b].cpu().numpy(), landmarks[b].cpu().numpy())
                for b in range(len(resized))]

    def _padded_shape(self, image: np.ndarray, scale: float) -> tuple[int, int]:
        stride = max(self.cfg.steps)
        h, w = (max(1, round(n * scale)) for n in image.shape[:2]) if scale != 1.0 else image.shape[:2]
        return math.ceil(h / stride) * stride, math.ceil(w / stride) * stride

    def detect_batch(self, images: list[np.ndarray], score_threshold: float = 0.5, nms_threshold: float = 0.4,
                     scales=(1.0,)) -> list[np.ndarray]:
        """Faces in each image; `scales` > 1 entry runs a multi-scale pyramid merged by one NMS.

        Images are batched only with images of the same padded size: padding an image to a larger
        one's size changes what the convolutions see near its border, so a face's score would depend
        on which other images share its batch. Grouped, each image gives what it gives alone.
        """
        per_image = [[] for _ in images]
        for scale in scales:
            groups: dict[tuple[int, int], list[int]] = {}
            for b, im in enumerate(images):
                groups.setdefault(self._padded_shape(im, float(scale)) if im is not None and im.ndim == 3
                                  else (0, 0), []).append(b)
            for members in groups.values():
                outputs = self._forward([images[b] for b in members], float(scale))
                for b, (boxes, scores, landmarks) in zip(members, outputs):
                    keep = scores > score_threshold
                    per_image[b].append(np.concatenate([boxes[keep], scores[keep, None], landmarks[keep]], axis=1))
        results = []
        for parts in per_image:
            dets = np.concatenate(parts, axis=0).astype(np.float32)
            dets = dets[np.argsort(-dets[:, 4])[:PRE_NMS_TOP_K]]
            dets = dets[nms(dets[:, :4], dets[:, 4], nms_threshold)][:POST_NMS_TOP_K]
            results.append(dets.reshape(-1, 15))
        return results

    def detect(self, image_bgr: np.ndarray, score_threshold: float = 0.5, nms_threshold: float = 0.4,
               scales=(1.0,)) -> np.ndarray:
        return self.detect_batch([image_bgr], score_threshold, nms_threshold, scales)[0]


def draw_detections(image_bgr: np.ndarray, detections: np.ndarray) -> np.ndarray:
    """A copy of the image with boxes, scores and the 5 landmarks drawn (eyes blue/red, nose green)."""
    import cv2

    out = image_bgr.copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255)]
    for det in detections:
        x1, y1, x2, y2 = (int(round(v)) for v in det[:4])
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), thick)
        cv2.putText(out, f"{det[4]:.2f}", (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thick, (0, 255, 0), thick)
        for k in range(5):
            cv2.circle(out, (int(round(det[5 + 2 * k])), int(round(det[6 + 2 * k]))), thick + 1, colours[k], -1)
    return out
