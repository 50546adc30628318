"""`train_recognition(cfg, data_dir, out_dir)`: train a face recognizer on a packed RecordIO set.

Runs as one plain process or under `torchrun` (DDP; the classifier is sharded across ranks), on the
shared training engine (`facepipe.training`): checkpoints every `checkpoint_every` steps and at each
epoch end; calling again with the same `out_dir` resumes from the latest complete checkpoint
(weights, optimizer, scheduler, scaler, sampler position, RNG), and refuses when the config differs,
naming the keys. Outputs: model.pt, model.onnx, metrics.json, training.png, per-target ROC/DET
plots, manifest.json (last).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from facepipe.config import to_dict
from facepipe.errors import ConfigError, DataError
from facepipe.recognition.config import RESUME_FREE_KEYS, RecognitionTrainConfig
from facepipe.run_logger import NullLogger, RunLogger
from facepipe.training.average import weight_average
from facepipe.training.checkpoint import Checkpoints
from facepipe.training.context import autocast, distributed, grad_scaler
from facepipe.training.loop import StepLog, TrainState, train_steps
from facepipe.training.schedule import TimeBudget, lr_scheduler


# ------------------------------------------------------------------------------ verification

def _verification_targets(cfg: RecognitionTrainConfig, data_dir: Path) -> dict:
    from facepipe.evaluation.pairs import load_verification_set
    from facepipe.data.crop import center_crop_resize

    if cfg.val_targets:
        paths = []
        for name in cfg.val_targets:
            p = Path(name) if Path(name).is_absolute() else data_dir / name
            if not p.is_file():
                raise ConfigError(f"RecognitionTrainConfig.val_targets: {p} does not exist "
                                  f"(expected a .bin or an LFW pairs.txt, relative to {data_dir})")
            paths.append(p)
    else:
        paths = sorted(data_dir.glob("*.bin"))
    targets = {}
    for p in paths:
        # .bin faces come aligned; pairs.txt images are raw photos, cropped as the config says
        crop = 1.0 if p.suffix == ".bin" else cfg.center_crop
        targets[p.stem] = load_verification_set(
            p, None, lambda img, c=crop: center_crop_resize(img, cfg.input_size, c))
    return targets


# ------------------------------------------------------------------------------ outputs

def _plot_training(history: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if history and "accuracy" in history[-1]:
        ax2 = ax.twinx()
        ax2.plot(steps, [h.get("accuracy", float("nan")) for h in history], color="tab:orange", label="train accuracy")
        ax2.set_ylabel("train accuracy")
        ax2.set_ylim(0, 1)
    ax.set_title("recognition training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_outputs(cfg, out_dir: Path, backbone, head_info: dict, state, metrics: dict, targets: dict,
                   device, logger: RunLogger) -> dict:
    from facepipe.evaluation.verification import plot_roc_det
    from facepipe.manifest import write_manifest
    from facepipe.recognition.engine import embed_faces

    model_path = out_dir / "model.pt"
    blob = {"kind": "recognizer", "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
            "config": to_dict(cfg), "backbone": cfg.backbone, "num_classes": head_info["num_classes"],
            "embedding_size": cfg.embedding_size, "input_size": cfg.input_size, "steps": state.step}
    torch.save(blob, str(model_path) + ".tmp")
    os.replace(str(model_path) + ".tmp", model_path)
    for name, target in targets.items():
        emb = embed_faces(backbone, target.faces, device)
        scores = np.sum(emb[target.left] * emb[target.right], axis=1)
        plots = out_dir / f"verification_{name}"
        plots.mkdir(exist_ok=True)
        plot_roc_det(scores, target.same, plots, name)
    if cfg.export_onnx:
        from facepipe.recognition.export import export_onnx

        metrics["onnx_max_abs_diff"] = export_onnx(backbone, cfg.input_size, out_dir / "model.onnx")
    _plot_training(state.history, out_dir / "training.png")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    for p in sorted(out_dir.glob("*.png")) + sorted(out_dir.glob("verification_*/*.png")):
        logger.log_artifact(p, "plots")
    for p in ("model.pt", "model.onnx", "metrics.json"):
        if (out_dir / p).exists():
            logger.log_artifact(out_dir / p)
    write_manifest(out_dir, "recognizer", {"steps": state.step})
    return metrics


# ------------------------------------------------------------------------------ the step

def train_recognition(cfg: RecognitionTrainConfig, data_dir, out_dir, logger: RunLogger = NullLogger()) -> dict:
    """Train (or resume) and write the recognizer to `out_dir`; returns the final metrics."""
    with distributed(cfg.device, cfg.deterministic, "RecognitionTrainConfig") as ctx:
        return _train(cfg, Path(data_dir), Path(out_dir), logger if ctx.main else NullLogger(), ctx)


def _train(cfg, data_dir: Path, out_dir: Path, logger: RunLogger, ctx) -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader

    from facepipe.data.insightface import FaceRecordSet
    from facepipe.manifest import content_digest
    from facepipe.recognition.backbones import build_backbone, faces_to_tensor
    from facepipe.recognition.data import FaceDataset, PKBatches, ShuffledBatches, check_records
    from facepipe.recognition.engine import Criterion, evaluate
    from facepipe.recognition.losses import CenterLoss, MarginHead

    device, rank, world = ctx.device, ctx.rank, ctx.world
    torch.manual_seed(cfg.seed * 1000 + rank)
    if not data_dir.is_dir():
        raise DataError("training data folder not found (expected PREFIX.rec/.idx and property)", path=data_dir)
    records = FaceRecordSet(data_dir, prefix=cfg.prefix)
    check_records(records, data_dir)
    if cfg.is_metric:
        sampler = PKBatches(records.labels, cfg.batch_size // cfg.pk_images, cfg.pk_images, cfg.seed, rank, world)
    else:
        sampler = ShuffledBatches(len(records), cfg.batch_size, cfg.seed, rank, world)
    loader = DataLoader(FaceDataset(records, cfg.input_size, cfg.augment, cfg.seed), batch_sampler=sampler,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if cfg.workers else None,
                        # its own generator: drawing worker seeds from the global RNG at each epoch
                        # start would shift dropout/Partial FC randomness after a resume
                        generator=torch.Generator().manual_seed(cfg.seed))
    steps_per_epoch = len(sampler)
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or cfg.epochs * steps_per_epoch)

    backbone = build_backbone(cfg.backbone, cfg.input_size, cfg.embedding_size, cfg.width, cfg.dropout).to(device)
    model = DistributedDataParallel(backbone, device_ids=[ctx.local_rank] if device.type == "cuda" else None) \
        if world > 1 else backbone
    criterion = Criterion(cfg)
    if not cfg.is_metric:
        criterion.head = MarginHead(records.num_classes, cfg.embedding_size, cfg.loss, cfg.margins(), cfg.scale,
                                    cfg.partial_fc_sample_rate).to(device)
        if cfg.center_loss_weight > 0:
            criterion.center = CenterLoss(records.num_classes, cfg.embedding_size).to(device)
    modules = {"backbone": backbone, "head": criterion.head, "center": criterion.center}
    modules = {name: m for name, m in modules.items() if m is not None}
    params = [p for m in modules.values() for p in m.parameters()]
    # model averaging: the averaged copy is evaluated and shipped; it is checkpointed, not trained
    average = weight_average(backbone, cfg.ema_decay) if cfg.ema_decay else None
    shipped = average.module if average is not None else backbone
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    budget = TimeBudget(cfg.time_budget_min, ctx)
    scheduler = lr_scheduler(optimizer, cfg, total_steps, round(cfg.warmup_epochs * steps_per_epoch), budget)
    scaler = grad_scaler(device, cfg.amp)

    data = {"digest": content_digest(data_dir), "num_classes": records.num_classes, "images": len(records)}
    checkpoints, state = Checkpoints(out_dir, ctx, to_dict(cfg), RESUME_FREE_KEYS, data,
                                    cfg.checkpoint_uri), TrainState()
    stateful = {**modules, "optimizer": optimizer, "scheduler": scheduler, **({"scaler": scaler} if scaler else {}),
                **({"average": average} if average is not None else {})}
    ckpt = checkpoints.resume(stateful)
    state = TrainState.from_dict(ckpt["state"]) if ckpt else state
    first_step = state.step  # 0, or where a resumed run picked up (reported: nothing before it is retrained)
    if ctx.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "manifest.json").unlink(missing_ok=True)  # incomplete until this run finishes
    targets = _verification_targets(cfg, data_dir) if ctx.main else {}

    def forward(batch):
        faces, labels = batch
        labels = labels.to(device, non_blocking=True)
        with autocast(device, cfg.amp):
            embeddings = model(faces_to_tensor(faces.numpy()).to(device, non_blocking=True))
        loss, correct = criterion(embeddings.float(), labels)
        return loss, {} if correct is None else {"accuracy": float(correct) / (len(labels) * world)}, len(labels)

    def average_center_grads():  # center-loss centers are replicated, not DDP-wrapped
        if criterion.center is not None and world > 1:
            dist.all_reduce(criterion.center.centers.grad)
            criterion.center.centers.grad /= world

    eval_metrics: dict = {}

    def run_eval():
        if targets:
            eval_metrics.update(evaluate(shipped, targets, device))  # fp32, as Recognizer users will see
            logger.log_metrics(eval_metrics, step=state.step)

    log = StepLog(cfg, ctx, logger, "train-recognition", state, total_steps, steps_per_epoch, budget,
                  lambda: checkpoints.save(stateful, state))

    def on_step(st, metrics) -> bool:
        if average is not None:
            average.update_parameters(backbone)  # before log(): a checkpoint it saves holds this step's average
        go = log(st, metrics)
        if cfg.eval_every and st.step % cfg.eval_every == 0:
            run_eval()
        return go

    budget.start = time.perf_counter()  # the budget is for training, not for loading
    for m in (model, *modules.values()):
        m.train()
    with checkpoints.session(stateful, state, log.progress):
        while state.step < total_steps and not budget.spent:
            sampler.set_epoch(state.epoch, state.batch_in_epoch)
            go = train_steps(state, loader, forward, optimizer, scheduler, scaler, params, cfg.clip_grad, on_step,
                             checkpoints, " or set clip_grad", average_center_grads)
            if state.batch_in_epoch == steps_per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                if not cfg.eval_every:
                    run_eval()
            if not go:
                break
    if not ctx.main:
        return {}
    if targets and not eval_metrics:
        run_eval()
    last = state.history[-1] if state.history else {}
    metrics = {"steps": state.step, "resumed_from_step": first_step, "epochs": state.epoch, "num_classes": records.num_classes,
               "num_images": len(records), "world_size": world, "steps_per_epoch": steps_per_epoch,
               "total_steps": total_steps, **{f"train.{k}": last[k] for k in ("loss", "accuracy") if k in last},
               "train.samples_per_s": float(np.median(log.rates)) if log.rates else 0.0,
               "train.seconds": time.perf_counter() - budget.start, **eval_metrics}
    return _write_outputs(cfg, out_dir, shipped, {"num_classes": records.num_classes}, state, metrics, targets,
                          device, logger)
