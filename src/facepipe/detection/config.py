"""`DetectionTrainConfig`: every knob of RetinaFace training (`train_detection` section of a job file)."""

from __future__ import annotations

from dataclasses import dataclass

from facepipe.config import bounded, choice, listfield
from facepipe.errors import ConfigError
from facepipe.training.launch import SCALE_KEYS, nodes_field, nproc_per_node_field
from facepipe.training.mirror import checkpoint_uri_field
from facepipe.training.schedule import SCHEDULES, check_schedule

# Keys that may change between a run and its resume (they do not change what is learned).
RESUME_FREE_KEYS = ("workers", "checkpoint_every", "log_every", "export_onnx", "eval_max_images", "device",
                    "checkpoint_uri", *SCALE_KEYS)


@dataclass
class DetectionTrainConfig:
    backbone: str = choice("mobilenet0.25", ["mobilenet0.25", "resnet50"],
                           help="RetinaFace backbone (torch-only implementations)")
    image_size: int = bounded(640, low=32, high=4096, help="square training input side (px)")
    fpn_channels: int = bounded(0, low=0, high=1024,
                                help="FPN/SSH width; 0 = the reference (64 mobilenet0.25, 256 resnet50)")
    min_sizes: list[list[int]] = listfield([[16, 32], [64, 128], [256, 512]],
                                           help="anchor sizes (px) per pyramid level")
    steps: list[int] = listfield([8, 16, 32], help="pyramid strides, one per level")
    variances: list[float] = listfield([0.1, 0.2], help="box coding variances (centre, size)")
    iou_threshold: float = bounded(0.35, low=0.0, high=1.0, low_inclusive=False,
                                   help="anchor/face IoU at or above which an anchor is positive")
    neg_pos_ratio: int = bounded(7, low=1, help="hard negatives kept per positive anchor")
    loc_weight: float = bounded(2.0, low=0.0, help="weight of the box SmoothL1 loss")
    landmark_weight: float = bounded(1.0, low=0.0, help="weight of the landmark SmoothL1 loss")
    optimizer: str = choice("sgd", ["sgd", "adamw"])
    lr: float = bounded(1e-3, low=0.0, low_inclusive=False)
    momentum: float = bounded(0.9, low=0.0, high=1.0)
    weight_decay: float = bounded(5e-4, low=0.0)
    warmup_epochs: float = bounded(1.0, low=0.0, help="linear LR warmup length (epochs, may be fractional)")
    schedule: str = choice("step", SCHEDULES)
    lr_steps: list[float] = listfield([0.76, 0.88], help="step schedule: fractions of training where LR x gamma")
    gamma: float = bounded(0.1, low=0.0, high=1.0)
    epochs: int = bounded(250, low=1)
    batch_size: int = bounded(32, low=1, help="images per step per process")
    max_steps: int = bounded(0, low=0, help="stop after this many steps, the LR schedule fitted to them (0: all epochs)")
    time_budget_min: float = bounded(0.0, low=0.0,
                                     help="stop after this many minutes of training, the LR schedule "
                                          "stretched to fit (0: off); such a run is not exactly resumable")
    amp: bool = False
    clip_grad: float = bounded(0.0, low=0.0, help="max gradient norm (0: off)")
    channels_last: bool = True
    deterministic: bool = True
    seed: int = 0
    checkpoint_every: int = bounded(500, low=0, help="steps between checkpoints, besides epoch ends (0: off)")
    checkpoint_uri: str = checkpoint_uri_field()
    log_every: int = bounded(10, low=1)
    workers: int = bounded(0, low=0, high=64, help="data loader processes")
    crop_scales: list[float] = listfield([0.3, 0.45, 0.6, 0.8, 1.0],
                                         help="square crop side as a fraction of the short image side")
    crop_min_visible: float = bounded(0.0, low=0.0, high=1.0,
                                      help="redraw a crop that keeps a face with less than this share of its box "
                                           "(0: the reference's crop; for photos where faces are large)")
    min_face_size: float = bounded(2.0, low=0.0, help="faces smaller than this (px, after resize) are dropped")
    photometric: bool = True
    flip: bool = True
    eval_score_threshold: float = bounded(0.02, low=0.0, high=1.0)
    eval_nms_threshold: float = bounded(0.4, low=0.0, high=1.0)
    eval_max_images: int = bounded(500, low=0, help="validation images scored after training (0 = all)")
    export_onnx: bool = True
    device: str = choice("auto", ["auto", "cpu", "cuda"])
    nproc_per_node: int = nproc_per_node_field()
    nodes: int = nodes_field()

    def validate(self) -> None:
        if len(self.min_sizes) != len(self.steps):
            raise ConfigError(f"DetectionTrainConfig.min_sizes: {len(self.min_sizes)} levels but steps has "
                              f"{len(self.steps)}; expected one list of sizes per stride")
        if len(self.steps) != 3:
            raise ConfigError(f"DetectionTrainConfig.steps: {self.steps}; expected 3 strides (the FPN has 3 levels)")
        if any(len(level) == 0 for level in self.min_sizes):
            raise ConfigError("DetectionTrainConfig.min_sizes: every level needs at least one anchor size")
        if len({len(level) for level in self.min_sizes}) != 1:
            raise ConfigError("DetectionTrainConfig.min_sizes: every level needs the same number of sizes")
        if len(self.variances) != 2 or min(self.variances) <= 0:
            raise ConfigError(f"DetectionTrainConfig.variances: {self.variances}; expected two positive numbers")
        if not self.crop_scales or not all(0 < s <= 1 for s in self.crop_scales):
            raise ConfigError(f"DetectionTrainConfig.crop_scales: {self.crop_scales}; expected values in (0, 1]")
        check_schedule(self)
        if self.image_size % max(self.steps) != 0:
            raise ConfigError(f"DetectionTrainConfig.image_size: {self.image_size} is not a multiple of the "
                              f"largest stride {max(self.steps)}")

    @property
    def anchors_per_cell(self) -> int:
        return len(self.min_sizes[0])
