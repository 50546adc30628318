"""One training epoch and one verification pass, apart from model definitions and bookkeeping."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from facepipe.errors import FacepipeError
from facepipe.recognition.backbones import faces_to_tensor
from facepipe.recognition.losses import contrastive_loss, triplet_loss


class NonFiniteLoss(FacepipeError):
    """The loss became NaN or infinite; training stops and keeps the last good checkpoint."""


@dataclass
class TrainState:
    """Where training is: saved in every checkpoint so a resume continues at the next batch."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)  # (step, loss, accuracy) per logged step

    def as_dict(self):
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                "history": [list(h) for h in self.history]}

    @classmethod
    def from_dict(cls, d):
        return cls(d["epoch"], d["batch_in_epoch"], d["step"], [tuple(h) for h in d["history"]])


@dataclass
class Criterion:
    """The configured loss: a MarginHead (+ optional center loss) or a metric-learning loss."""

    cfg: object
    head: torch.nn.Module | None = None
    center: torch.nn.Module | None = None

    def __call__(self, embeddings, labels):
        cfg = self.cfg
        if self.head is not None:
            loss, correct = self.head(embeddings, labels)
            if self.center is not None:
                loss = loss + cfg.center_loss_weight * self.center(embeddings, labels)
            return loss, correct
        margin = cfg.metric_margin
        if cfg.loss == "triplet":
            return triplet_loss(embeddings, labels, margin, cfg.mining), None
        return contrastive_loss(embeddings, labels, margin), None


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CPU, fp16 on GPU (with a GradScaler), or nothing."""
    if not amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def train_one_epoch(state: TrainState, model, criterion: Criterion, loader, optimizer, scheduler, scaler,
                    device: torch.device, cfg, params: list, on_step: Callable[[TrainState, dict], bool],
                    world: int = 1) -> bool:
    """Train over `loader` (which already skips batches done before a resume).

    After every step `on_step(state, metrics)` logs/checkpoints/evaluates and returns False to
    stop early (max_steps). Returns False when training should stop.
    """
    model.train()
    criterion_modules = [m for m in (criterion.head, criterion.center) if m is not None]
    for m in criterion_modules:
        m.train()
    tick = time.perf_counter()
    for faces, labels in loader:
        images = faces_to_tensor(faces.numpy()).to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast_for(device, cfg.amp):
            embeddings = model(images)
        loss, correct = criterion(embeddings.float(), labels)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"loss became {loss.item()} at step {state.step + 1} (epoch {state.epoch + 1}); "
                f"lower lr (now {scheduler.get_last_lr()[0]:.4g}) or set clip_grad")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if criterion.center is not None and world > 1:
            # center-loss centers are replicated, not DDP-wrapped: average their gradients by hand
            grad = criterion.center.centers.grad
            dist.all_reduce(grad)
            grad /= world
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        state.step += 1
        state.batch_in_epoch += 1
        now = time.perf_counter()
        metrics = {"loss": float(loss.item()), "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": len(labels) * world / max(now - tick, 1e-9)}
        if correct is not None:
            metrics["accuracy"] = float(correct) / (len(labels) * world)
        tick = now
        if not on_step(state, metrics):
            return False
    return True


@torch.no_grad()
def embed_faces(model, faces_bgr: np.ndarray, device, batch_size: int = 64, flip: bool = True,
                amp: bool = False) -> np.ndarray:
    """L2-normalised embeddings of uint8 BGR faces; with flip, image + mirror image summed first."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(faces_bgr), batch_size):
        x = faces_to_tensor(faces_bgr[i:i + batch_size]).to(device)
        with autocast_for(device, amp):
            e = model(x).float()
            if flip:
                e = e + model(torch.flip(x, dims=[3])).float()
        out.append(torch.nn.functional.normalize(e).cpu())
    model.train(was_training)
    if not out:
        return np.zeros((0, 0), np.float32)
    return torch.cat(out).numpy().astype(np.float32)


def evaluate(model, targets: dict, device, amp: bool = False) -> dict:
    """LFW-protocol verification on each loaded target {name: VerificationSet}; metrics by name."""
    from facepipe.evaluation.verification import verification_metrics

    metrics = {}
    for name, target in targets.items():
        emb = embed_faces(model, target.faces, device, amp=amp)
        scores = np.sum(emb[target.left] * emb[target.right], axis=1)
        for key, value in verification_metrics(scores, target.same, target.folds).items():
            if not (isinstance(value, float) and math.isnan(value)):
                metrics[f"{name}.{key}"] = value
    return metrics
