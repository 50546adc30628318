"""`RecognitionTrainConfig`: the flat, validated settings of `facepipe train-recognition`.

Margins follow the combined form of InsightFace: the target logit is
`s * (cos(m1 * theta + m2) - m3)`. Each margin loss uses its own margins (SphereFace m1, ArcFace m2,
CosFace m3, `combined` all three); a margin left unset takes the loss's published default, and a
margin set for a loss that does not use it is refused rather than silently ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from facepipe.config import bounded, choice, listfield
from facepipe.errors import ConfigError
from facepipe.training.launch import SCALE_KEYS, nodes_field, nproc_per_node_field
from facepipe.training.mirror import checkpoint_uri_field
from facepipe.training.schedule import SCHEDULES, check_schedule

BACKBONES = ["iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet"]
MARGIN_LOSSES = ["softmax", "normface", "sphereface", "cosface", "arcface", "combined"]
METRIC_LOSSES = ["contrastive", "triplet"]

# Which margins each loss uses, and their defaults (papers / insightface configs).
MARGIN_DEFAULTS = {
    "softmax": {},
    "normface": {},
    "sphereface": {"m1": 1.7},
    "cosface": {"m3": 0.35},
    "arcface": {"m2": 0.5},
    "combined": {"m1": 1.0, "m2": 0.3, "m3": 0.2},
}

# Keys that may change between a run and its resume (they do not change what is learned).
RESUME_FREE_KEYS = ("workers", "eval_every", "checkpoint_every", "val_targets", "export_onnx", "device",
                    "log_every", "checkpoint_uri", *SCALE_KEYS)


@dataclass
class RecognitionTrainConfig:
    # model
    backbone: str = choice("iresnet50", BACKBONES, help="feature extractor")
    width: float = bounded(1.0, low=0.0, high=4.0, low_inclusive=False,
                           help="channel width multiplier (e.g. 0.25 for CPU tests)")
    embedding_size: int = bounded(512, low=8, high=4096)
    input_size: int = bounded(112, low=32, high=512, help="square face crop side in pixels")
    dropout: float = bounded(0.0, low=0.0, high=1.0, high_inclusive=False)
    # loss
    loss: str = choice("arcface", MARGIN_LOSSES + METRIC_LOSSES)
    m1: Optional[float] = bounded(None, low=1.0, high=10.0, help="multiplicative angular margin (SphereFace)")
    m2: Optional[float] = bounded(None, low=0.0, high=math.pi / 2, help="additive angular margin (ArcFace), radians")
    m3: Optional[float] = bounded(None, low=0.0, high=1.0, high_inclusive=False, help="additive cosine margin (CosFace)")
    scale: float = bounded(64.0, low=1.0, high=1024.0, help="logit scale s for normalised losses")
    center_loss_weight: float = bounded(0.0, low=0.0, high=100.0)
    partial_fc_sample_rate: float = bounded(1.0, low=0.0, high=1.0, low_inclusive=False,
                                            help="share of class centers per step (positives always kept)")
    pk_images: int = bounded(4, low=2, high=64, help="metric losses: K images per identity; P = batch_size / K")
    mining: str = choice("batch_hard", ["batch_hard", "semi_hard"], help="triplet negative mining")
    metric_margin: float = bounded(0.3, low=0.0, high=4.0, low_inclusive=False,
                                   help="margin of the triplet / contrastive loss (L2 distance)")
    # optimisation
    optimizer: str = choice("sgd", ["sgd", "adamw"])
    lr: float = bounded(0.1, low=0.0, low_inclusive=False)
    momentum: float = bounded(0.9, low=0.0, high=1.0, high_inclusive=False)
    weight_decay: float = bounded(5e-4, low=0.0, high=1.0)
    warmup_epochs: float = bounded(0.0, low=0.0)
    schedule: str = choice("poly", SCHEDULES)
    lr_steps: list[float] = listfield([0.76, 0.88], help="step schedule: fractions of training where LR x gamma")
    gamma: float = bounded(0.1, low=0.0, high=1.0)
    epochs: int = bounded(20, low=1, high=100000)
    max_steps: int = bounded(0, low=0, help="stop after this many steps (0: run all epochs)")
    time_budget_min: float = bounded(0.0, low=0.0,
                                     help="stop after this many minutes of training, the LR schedule "
                                          "stretched to fit (0: off); such a run is not exactly resumable")
    batch_size: int = bounded(128, low=2, high=65536, help="per process")
    amp: bool = False
    clip_grad: float = bounded(5.0, low=0.0, help="max gradient norm (0: off)")
    ema_decay: float = bounded(0.0, low=0.0, high=1.0, high_inclusive=False,
                               help="model averaging: ship an exponential moving average of the backbone's "
                                    "weights, updated every step with this decay (e.g. 0.999; 0: off)")
    deterministic: bool = False
    seed: int = 0
    # data
    prefix: str = "train"
    augment: str = choice("flip", ["none", "flip", "flip_jitter", "strong"],
                          help="flip_jitter: flip, small shift/scale, brightness/contrast; strong: also "
                               "rotation, colour, grayscale, low resolution, random erasing")
    center_crop: float = bounded(1.0, low=0.1, high=1.0,
                                 help="share of an unaligned image's shorter side kept around its centre "
                                      "when evaluating without a detector (LFW 250x250: about 0.5)")
    workers: int = bounded(2, low=0, high=64)
    # bookkeeping
    checkpoint_every: int = bounded(500, low=0, help="steps between checkpoints, besides epoch ends (0: off)")
    checkpoint_uri: str = checkpoint_uri_field()
    eval_every: int = bounded(0, low=0, help="steps between verification runs (0: at epoch ends)")
    log_every: int = bounded(10, low=1)
    val_targets: list[str] = listfield([], help=".bin or pairs.txt files (relative to DATA_PATH); "
                                               "empty: every *.bin in DATA_PATH")
    export_onnx: bool = True
    device: str = choice("auto", ["auto", "cpu", "cuda"])
    nproc_per_node: int = nproc_per_node_field()
    nodes: int = nodes_field()

    @property
    def is_metric(self) -> bool:
        return self.loss in METRIC_LOSSES

    def margins(self) -> tuple[float, float, float]:
        """(m1, m2, m3) for the margin losses, defaults filled in."""
        used = MARGIN_DEFAULTS.get(self.loss, {})
        values = {"m1": 1.0, "m2": 0.0, "m3": 0.0}
        for key, default in used.items():
            values[key] = getattr(self, key) if getattr(self, key) is not None else default
        return values["m1"], values["m2"], values["m3"]

    def validate(self) -> None:
        check_schedule(self)
        used = MARGIN_DEFAULTS.get(self.loss, {})
        for key in ("m1", "m2", "m3"):
            if getattr(self, key) is not None and key not in used:
                users = [name for name, d in MARGIN_DEFAULTS.items() if key in d]
                raise ConfigError(
                    f"RecognitionTrainConfig.{key}: loss {self.loss!r} has no {key} margin; "
                    f"{key} is used by {users}")
        if self.is_metric:
            if self.batch_size % self.pk_images:
                raise ConfigError(
                    f"RecognitionTrainConfig.batch_size: {self.batch_size} is not a multiple of "
                    f"pk_images={self.pk_images} (loss {self.loss} samples P identities x K images)")
            if self.batch_size // self.pk_images < 2:
                raise ConfigError(
                    f"RecognitionTrainConfig.batch_size: {self.batch_size} gives fewer than 2 identities "
                    f"per batch with pk_images={self.pk_images}")
            if self.partial_fc_sample_rate != 1.0 or self.center_loss_weight:
                raise ConfigError(
                    f"RecognitionTrainConfig: partial_fc_sample_rate and center_loss_weight apply to "
                    f"classification losses, not {self.loss!r}")
