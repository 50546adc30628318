"""`train_detection`: RetinaFace training on a label.txt tree -> model.pt, model.onnx, metrics.json, plots.

SGD (or AdamW) on the shared training engine (`facepipe.training`): linear warmup then a step,
cosine, poly or constant schedule; optional AMP (bfloat16 on CPU, float16 with loss scaling on
CUDA); DDP when started by `torchrun`. Checkpoints every `checkpoint_every` steps and at epoch ends;
a rerun into the same OUT resumes from the latest and reaches bit-identical weights, because batches
and augmentations are keyed by (seed, epoch, index).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from facepipe.config import to_dict
from facepipe.detection.anchors import prior_boxes
from facepipe.detection.config import RESUME_FREE_KEYS, DetectionTrainConfig
from facepipe.detection.data import DetectionDataset, EpochBatches, collate, find_label_file, load_samples
from facepipe.detection.loss import MultiBoxLoss
from facepipe.detection.model import build_model
from facepipe.errors import DataError
from facepipe.run_logger import NullLogger
from facepipe.training.checkpoint import Checkpoints
from facepipe.training.context import autocast, distributed, grad_scaler
from facepipe.training.loop import StepLog, TrainState, train_steps
from facepipe.training.schedule import TimeBudget, lr_scheduler


def make_optimizer(cfg: DetectionTrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # No weight decay on BN and biases: decaying them only fights the normalisation.
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


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
    with distributed(cfg.device, cfg.deterministic, "DetectionTrainConfig") as ctx:
        return _train(cfg, Path(data_dir), Path(out_dir), logger if ctx.main else NullLogger(), ctx)


def _train(cfg: DetectionTrainConfig, data_dir: Path, out_dir: Path, logger, ctx) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    from facepipe.manifest import content_digest, write_manifest

    device, world = ctx.device, ctx.world
    torch.manual_seed(cfg.seed)
    train_samples = load_samples(find_label_file(data_dir, "train"))
    if not load_samples.last_report["faces_kept"]:  # only negatives: it would learn that nothing is a face
        raise DataError(f"no faces: {len(train_samples)} usable image(s), none with a usable box",
                        path=find_label_file(data_dir, "train"))
    val_label = data_dir / "val" / "label.txt"
    val_samples = load_samples(val_label) if val_label.is_file() else []
    dataset = DetectionDataset(train_samples, cfg.image_size, cfg.seed, True, cfg.crop_scales,
                               cfg.min_face_size, cfg.photometric, cfg.flip, cfg.crop_min_visible)
    spe = EpochBatches(len(dataset), cfg.batch_size, cfg.seed, cfg.epochs, ctx.rank, world).steps_per_epoch
    total_steps = min(spe * cfg.epochs, cfg.max_steps or spe * cfg.epochs)

    model = build_model(cfg).to(device)
    # NHWC runs the depthwise convolutions of MobileNet several times faster on CPU (oneDNN).
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = make_optimizer(cfg, model)
    budget = TimeBudget(cfg.time_budget_min, ctx)
    scheduler = lr_scheduler(optimizer, cfg, total_steps, round(cfg.warmup_epochs * spe), budget)
    scaler = grad_scaler(device, cfg.amp)
    data = {"digest": content_digest(find_label_file(data_dir, "train")), "images": len(train_samples)}
    checkpoints, state = Checkpoints(out_dir, ctx, to_dict(cfg), RESUME_FREE_KEYS, data,
                                    cfg.checkpoint_uri), TrainState()
    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler, **({"scaler": scaler} if scaler else {})}
    ckpt = checkpoints.resume(stateful)
    state = TrainState.from_dict(ckpt["state"]) if ckpt else state
    first_step = state.step
    train_model = DistributedDataParallel(model, device_ids=[ctx.local_rank] if device.type == "cuda" else None) \
        if world > 1 else model
    sampler = EpochBatches(len(dataset), cfg.batch_size, cfg.seed, cfg.epochs, ctx.rank, world,
                           first_epoch=state.step // spe, skip=state.step % spe)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=cfg.workers, pin_memory=device.type == "cuda")
    priors = prior_boxes(cfg.image_size, cfg.image_size, cfg.min_sizes, cfg.steps).to(device)
    criterion = MultiBoxLoss(cfg.iou_threshold, cfg.neg_pos_ratio, cfg.variances, cfg.loc_weight,
                             cfg.landmark_weight)
    if ctx.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        logger.set_tags({"step": "train_detection", "resumed_from_step": str(state.step)})

    def forward(batch):
        images, targets = batch
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with autocast(device, cfg.amp):
            predictions = train_model(images)
        losses = criterion(predictions, priors, [t.to(device) for t in targets])
        return losses.pop("loss"), {k: float(v.detach()) for k, v in losses.items()}, images.shape[0]

    log = StepLog(cfg, ctx, logger, "train-detection", state, total_steps, spe, budget,
                  lambda: checkpoints.save(stateful, state))
    budget.start = time.perf_counter()  # the budget is for training, not for loading
    train_model.train()
    with checkpoints.session(stateful, state, log.progress):
        if state.step < total_steps:
            train_steps(state, loader, forward, optimizer, scheduler, scaler, list(model.parameters()), cfg.clip_grad,
                        log, checkpoints, " or check the labels")
    elapsed = time.perf_counter() - budget.start
    history = state.history
    metrics = {"train.steps": state.step, "resumed_from_step": first_step, "total_steps": total_steps, "train.finished": state.step >= total_steps,
               "train.epochs_done": state.step / spe, "train.seconds": elapsed,
               "train.images_per_s": (state.step - first_step) * cfg.batch_size * world / max(elapsed, 1e-9),
               # past start-up (workers, allocator)
               "train.steady_images_per_s": float(np.median(log.rates[2:] or log.rates or [0.0])),
               "train.final_loss": (float(np.mean([h["loss"] for h in history if h["step"] > state.step - spe]))
                                    if history else None),
               "train.first_loss": history[0]["loss"] if history else None,
               "num_images": len(train_samples), "world_size": world, "steps_per_epoch": spe}
    if ctx.main:
        model = model.to(memory_format=torch.contiguous_format).eval()
        blob = {"kind": "detector", "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "config": to_dict(cfg), "backbone": cfg.backbone, "image_size": cfg.image_size,
                "steps_trained": state.step}
        torch.save(blob, out_dir / "model.pt.tmp")
        os.replace(out_dir / "model.pt.tmp", out_dir / "model.pt")
        if history:
            plot_losses(history, out_dir / "loss_curve.png")
        if cfg.export_onnx:
            from facepipe.detection.export import export_onnx

            metrics |= export_onnx(model, out_dir / "model.onnx", cfg.image_size)
        if val_samples:
            metrics |= validate(model, cfg, val_samples, out_dir, device)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        for name in ("metrics.json", "loss_curve.png", "pr_curve.png"):
            if (out_dir / name).exists():
                logger.log_artifact(out_dir / name)
        write_manifest(out_dir, kind="detector", extra={"backbone": cfg.backbone, "steps": state.step})
    ctx.barrier()
    return metrics
