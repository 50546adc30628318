"""`train_detection`: RetinaFace training on a label.txt tree -> model.pt, model.onnx, metrics.json, plots.

SGD (or AdamW) with linear warmup then a step or cosine schedule; optional AMP (bfloat16 on CPU,
float16 with loss scaling on CUDA); DDP when started by `torchrun` (gloo on CPU, NCCL on GPU; no
process group at all for a single process). A checkpoint every `checkpoint_every` steps holds model,
optimizer, scaler and step; a rerun into the same OUT resumes from it and reaches bit-identical
weights, because batches and augmentations are keyed by (seed, epoch, index).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facepipe.config import diff, to_dict
from facepipe.detection.anchors import prior_boxes
from facepipe.detection.config import RESUME_MUTABLE_KEYS, DetectionTrainConfig
from facepipe.detection.data import DetectionDataset, EpochBatches, collate, find_label_file, load_samples
from facepipe.detection.loss import MultiBoxLoss
from facepipe.detection.model import build_model
from facepipe.errors import ConfigError, DataError
from facepipe.run_logger import NullLogger

CHECKPOINT = "checkpoints/last.pt"


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "DistContext":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0


def learning_rate(cfg: DetectionTrainConfig, step: int, total_steps: int, warmup_steps: int) -> float:
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    if cfg.schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * cfg.gamma ** sum(step >= f * total_steps for f in cfg.lr_steps)


def make_optimizer(cfg: DetectionTrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # No weight decay on BN and biases: decaying them only fights the normalisation.
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, cfg: DetectionTrainConfig) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot load the resume checkpoint ({exc}); delete it to start over", path=path) from None
    changed = diff(ckpt["config"], to_dict(cfg), ignore=RESUME_MUTABLE_KEYS)
    if changed:
        raise ConfigError(f"{path}: cannot resume, config differs in {changed} "
                          f"(only {list(RESUME_MUTABLE_KEYS)} may change); use a new output folder")
    return ckpt


def _autocast(cfg: DetectionTrainConfig, device: torch.device):
    if not cfg.amp:
        return torch.autocast(device.type, enabled=False)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "loss_box", "loss_cls", "loss_landmark"):
        ax.plot(steps, [h[key] for h in history], label=key, lw=1 if key != "loss" else 2)
    ax.set(xlabel="step", ylabel="loss", title="RetinaFace training loss", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def validate(model, cfg: DetectionTrainConfig, samples, out_dir: Path, device) -> dict:
    """AP@0.5 on validation images at their own resolution; writes pr_curve.png."""
    from facepipe.detection.data import read_image
    from facepipe.detection.evaluate import ground_truth_boxes, plot_pr_curves, score_detections
    from facepipe.detection.infer import Detector

    if cfg.eval_max_images:
        samples = samples[:cfg.eval_max_images]
    detector = Detector(model.eval(), cfg, device=str(device))
    predictions = [detector.detect(read_image(s.path), cfg.eval_score_threshold, cfg.eval_nms_threshold)
                   for s in samples]
    metrics, curves = score_detections(predictions, ground_truth_boxes(samples), prefix="val")
    plot_pr_curves(curves, out_dir / "pr_curve.png", title="validation, IoU 0.5")
    return metrics


def train_detection(cfg: DetectionTrainConfig, data_dir: str | Path, out_dir: str | Path,
                    logger=NullLogger()) -> dict:
    from facepipe.manifest import write_manifest
    from facepipe.progress import Progress

    out_dir = Path(out_dir)
    dist = DistContext.from_env()
    use_cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{dist.local_rank}" if use_cuda else "cpu")
    if dist.world > 1:
        import torch.distributed as tdist

        if use_cuda:
            torch.cuda.set_device(device)
        tdist.init_process_group("nccl" if use_cuda else "gloo")
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True

    train_samples = load_samples(find_label_file(data_dir, "train"))
    if not train_samples:
        raise DataError("no training images listed", path=find_label_file(data_dir, "train"))
    val_label = Path(data_dir) / "val" / "label.txt"
    val_samples = load_samples(val_label) if val_label.is_file() else []
    dataset = DetectionDataset(train_samples, cfg.image_size, cfg.seed, True, cfg.crop_scales,
                               cfg.min_face_size, cfg.photometric, cfg.flip)

    model = build_model(cfg).to(device)
    # NHWC runs the depthwise convolutions of MobileNet several times faster on CPU (oneDNN).
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = make_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and use_cuda)
    step, history = 0, []
    ckpt_path = out_dir / CHECKPOINT
    if ckpt_path.exists():
        ckpt = _load_checkpoint(ckpt_path, cfg)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, history = int(ckpt["step"]), list(ckpt["history"])
    train_model = model
    if dist.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if use_cuda else None)

    probe = EpochBatches(len(dataset), cfg.batch_size, cfg.seed, cfg.epochs, dist.rank, dist.world)
    spe = probe.steps_per_epoch
    total_steps = spe * cfg.epochs
    warmup_steps = round(cfg.warmup_epochs * spe)
    sampler = EpochBatches(len(dataset), cfg.batch_size, cfg.seed, cfg.epochs, dist.rank, dist.world,
                           first_epoch=min(step // spe, cfg.epochs), skip=step % spe if step < total_steps else 0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=cfg.workers, pin_memory=use_cuda)
    priors = prior_boxes(cfg.image_size, cfg.image_size, cfg.min_sizes, cfg.steps).to(device)
    criterion = MultiBoxLoss(cfg.iou_threshold, cfg.neg_pos_ratio, cfg.variances, cfg.loc_weight,
                             cfg.landmark_weight)
    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        logger.log_params(to_dict(cfg))
        logger.set_tags({"step": "train_detection", "resumed_from_step": str(step)})

    def save_checkpoint():
        if dist.main:
            _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scaler": scaler.state_dict(), "step": step, "history": history,
                          "config": to_dict(cfg)}, ckpt_path)

    stop_at = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    t0 = time.monotonic()
    seen, first_step, seen_at_steady, t_steady = 0, step, None, t0
    train_model.train()
    with Progress(stop_at - step, "training", unit="step") as progress:
        for images, targets in loader:
            if step >= stop_at:
                break
            lr = learning_rate(cfg, step, total_steps, warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            with _autocast(cfg, device):
                predictions = train_model(images)
            losses = criterion(predictions, priors, [t.to(device) for t in targets])
            if not torch.isfinite(losses["loss"]):
                raise FloatingPointError(f"loss is {losses['loss'].item()} at step {step + 1}; lower lr "
                                         f"(now {lr:g}) or check the labels")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            seen += images.shape[0] * dist.world
            if seen_at_steady is None and step - first_step >= 2:  # past start-up (workers, allocator)
                t_steady, seen_at_steady = time.monotonic(), seen
            record = {"step": step, "lr": lr, **{k: float(v.detach()) for k, v in losses.items()}}
            history.append(record)
            progress.update(1, loss=record["loss"])
            if dist.main and (step % cfg.log_every == 0 or step == stop_at):
                rate = seen / max(time.monotonic() - t0, 1e-9)
                logger.log_metrics({f"train.{k}": v for k, v in record.items() if k != "step"}
                                   | {"train.images_per_s": rate, "train.epoch": step / spe}, step=step)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save_checkpoint()
            if cfg.max_minutes and time.monotonic() - t0 > cfg.max_minutes * 60:
                break
    save_checkpoint()
    elapsed = time.monotonic() - t0

    metrics = {"train.steps": step, "train.total_steps": total_steps, "train.finished": step >= total_steps,
               "train.epochs_done": step / spe, "train.seconds": elapsed,
               "train.images_per_s": seen / max(elapsed, 1e-9),
               "train.steady_images_per_s": ((seen - seen_at_steady) / max(time.monotonic() - t_steady, 1e-9)
                                             if seen_at_steady is not None and seen > seen_at_steady
                                             else seen / max(elapsed, 1e-9)),
               "train.final_loss": float(np.mean([h["loss"] for h in history[-max(1, spe):]])) if history else None,
               "train.first_loss": history[0]["loss"] if history else None,
               "train.images": len(train_samples), "train.world_size": dist.world}
    if dist.main:
        model = model.to(memory_format=torch.contiguous_format).eval()
        blob = {"kind": "detector", "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "config": to_dict(cfg), "backbone": cfg.backbone, "image_size": cfg.image_size,
                "steps_trained": step}
        _atomic_save(blob, out_dir / "model.pt")
        if history:
            plot_losses(history, out_dir / "loss_curve.png")
        if cfg.export_onnx:
            from facepipe.detection.export import export_onnx

            metrics |= export_onnx(model, out_dir / "model.onnx", cfg.image_size)
        if val_samples:
            metrics |= validate(model, cfg, val_samples, out_dir, device)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        logger.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
        for name in ("metrics.json", "loss_curve.png", "pr_curve.png"):
            if (out_dir / name).exists():
                logger.log_artifact(out_dir / name)
        write_manifest(out_dir, kind="detector", extra={"backbone": cfg.backbone, "steps": step})
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
        tdist.destroy_process_group()
    return metrics
