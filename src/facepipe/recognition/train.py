"""`train_recognition(cfg, data_dir, out_dir)`: train a face recognizer on a packed RecordIO set.

Runs as one plain process (no process group at all) or under `torchrun` (DDP: gloo on CPU, NCCL
on GPU; the classifier is sharded across ranks). Checkpoints go to `out_dir/checkpoints/` every
`checkpoint_every` steps and at each epoch end; calling again with the same `out_dir` resumes from
the latest complete checkpoint (weights, optimizer, scheduler, scaler, sampler position, RNG), and
refuses when the config differs, naming the keys. Outputs: model.pt, model.onnx, metrics.json,
training.png, per-target ROC/DET plots, manifest.json (last).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from facepipe.config import diff, to_dict
from facepipe.errors import ConfigError, DataError
from facepipe.progress import Progress
from facepipe.recognition.config import RESUME_FREE_KEYS, RecognitionTrainConfig
from facepipe.run_logger import NullLogger, RunLogger

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
KEEP_CHECKPOINTS = 2
WARMUP_BUDGET_SHARE = 0.1


# ------------------------------------------------------------------------------ processes

def _start_distributed(device_kind: str) -> tuple[int, int, int, bool]:
    """(rank, world, local_rank, started_here). A process group only under torchrun (WORLD_SIZE > 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True


def _device(cfg: RecognitionTrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("RecognitionTrainConfig.device: 'cuda' requested but no GPU is visible")
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


# ------------------------------------------------------------------------------ schedule

def lr_factor(step: int, total: int, warmup: int, schedule: str, time_fraction: float = 0.0) -> float:
    """Linear warmup, then polynomial (power 2), cosine or constant decay; multiplies cfg.lr.

    With a time budget, decay progress is the larger of the step and the elapsed-time fractions,
    and warmup ends after at most 10% of the budget (a slow machine may not reach `warmup` steps).
    """
    if step < warmup and time_fraction < WARMUP_BUDGET_SHARE:
        return max((step + 1) / warmup, time_fraction / WARMUP_BUDGET_SHARE)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return (1.0 - progress) ** 2


def _budget_fraction(clock: dict, minutes: float, world: int) -> float:
    """Share of the time budget used, as rank 0 measures it (ranks must stop at the same step)."""
    used = torch.tensor([(time.perf_counter() - clock["start"]) / (minutes * 60.0)])
    if world > 1:
        dist.broadcast(used, src=0)
    return float(used)


# ------------------------------------------------------------------------------ checkpoints

def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest checkpoint folder that every rank finished writing."""
    root = Path(out_dir) / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if (p / COMPLETE).exists()) if root.is_dir() else []
    return done[-1] if done else None


def _save_checkpoint(out_dir: Path, rank: int, world: int, payload: dict, step: int) -> Path:
    folder = Path(out_dir) / CHECKPOINTS / f"step-{step:09d}"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"rank{rank}.pt.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, folder / f"rank{rank}.pt")
    _barrier(world)
    if rank == 0:
        (folder / COMPLETE).write_text(json.dumps({"step": step, "world_size": world}))
        complete = sorted(p for p in folder.parent.glob("step-*") if (p / COMPLETE).exists())
        for old in complete[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(world)
    return folder


def _check_resume(folder: Path, cfg_dict: dict, world: int) -> None:
    info = json.loads((folder / COMPLETE).read_text())
    if info["world_size"] != world:
        raise ConfigError(f"{folder}: written by {info['world_size']} processes, resuming with {world}; "
                          f"resume with the same number of processes (the classifier is sharded)")
    saved = torch.load(folder / "rank0.pt", map_location="cpu", weights_only=True)["config"]
    changed = diff(saved, cfg_dict, ignore=RESUME_FREE_KEYS)
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {cfg_dict.get(k)!r}" for k in changed)
        raise ConfigError(f"{folder.parent.parent} holds a run with a different config ({detail}); "
                          f"keys that differ: {changed}. Use the same settings to resume, or a new "
                          f"MODEL_OUTPUT_PATH to start over")


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

    h = np.asarray(history, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(h):
        ax.plot(h[:, 0], h[:, 1], label="loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if h.shape[1] > 2 and not np.all(np.isnan(h[:, 2])):
            ax2 = ax.twinx()
            ax2.plot(h[:, 0], h[:, 2], color="tab:orange", label="train accuracy")
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
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    device_kind = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    rank, world, local_rank, started = _start_distributed(device_kind)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _train(cfg, data_dir, out_dir, logger if rank == 0 else NullLogger(), rank, world, local_rank)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)  # a process-wide switch: give it back
        if started:
            dist.destroy_process_group()


def _train(cfg, data_dir: Path, out_dir: Path, logger: RunLogger, rank: int, world: int, local_rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader

    from facepipe.data.insightface import FaceRecordSet
    from facepipe.recognition.backbones import build_backbone
    from facepipe.recognition.data import FaceDataset, PKBatches, ShuffledBatches, check_records
    from facepipe.recognition.engine import (Criterion, NonFiniteLoss, TrainState, evaluate,
                                             train_one_epoch)
    from facepipe.recognition.losses import CenterLoss, MarginHead

    device = _device(cfg, local_rank)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(cfg.seed * 1000 + rank)

    if not data_dir.is_dir():
        raise DataError("training data folder not found (expected PREFIX.rec/.idx and property)", path=data_dir)
    records = FaceRecordSet(data_dir, prefix=cfg.prefix)
    check_records(records, data_dir)
    num_classes = records.num_classes
    if cfg.is_metric:
        sampler = PKBatches(records.labels, cfg.batch_size // cfg.pk_images, cfg.pk_images, cfg.seed, rank, world)
    else:
        sampler = ShuffledBatches(len(records), cfg.batch_size, cfg.seed, rank, world)
    dataset = FaceDataset(records, cfg.input_size, cfg.augment, cfg.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if cfg.workers else None,
                        # its own generator: drawing worker seeds from the global RNG at each epoch
                        # start would shift dropout/Partial FC randomness after a resume
                        generator=torch.Generator().manual_seed(cfg.seed))
    steps_per_epoch = len(sampler)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    backbone = build_backbone(cfg.backbone, cfg.input_size, cfg.embedding_size, cfg.width, cfg.dropout).to(device)
    model = DistributedDataParallel(backbone, device_ids=[local_rank] if device.type == "cuda" else None) \
        if world > 1 else backbone
    criterion = Criterion(cfg)
    if not cfg.is_metric:
        criterion.head = MarginHead(num_classes, cfg.embedding_size, cfg.loss, cfg.margins(), cfg.scale,
                                    cfg.partial_fc_sample_rate).to(device)
        if cfg.center_loss_weight > 0:
            criterion.center = CenterLoss(num_classes, cfg.embedding_size).to(device)
    params = [p for m in (backbone, criterion.head, criterion.center) if m is not None for p in m.parameters()]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    clock = {"start": None, "fraction": 0.0}  # time-budget runs: share of the budget used
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.schedule, clock["fraction"]))
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None

    cfg_dict = to_dict(cfg)
    state = TrainState()
    resume_from = latest_checkpoint(out_dir)
    if resume_from is not None:
        _check_resume(resume_from, cfg_dict, world)
        ckpt = torch.load(resume_from / f"rank{rank}.pt", map_location=device, weights_only=True)
        backbone.load_state_dict(ckpt["backbone"])
        for name in ("head", "center"):
            if getattr(criterion, name) is not None:
                getattr(criterion, name).load_state_dict(ckpt[name])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu())
        state = TrainState.from_dict(ckpt["state"])
        print(f"train-recognition: resuming from {resume_from} (step {state.step}, epoch {state.epoch + 1})",
              flush=True)
    elif rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out_dir / "manifest.json").unlink(missing_ok=True)  # incomplete until this run finishes
        logger.log_params({**cfg_dict, "num_classes": num_classes, "num_images": len(records),
                           "world_size": world, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                           "device": device.type})
    targets = _verification_targets(cfg, data_dir) if rank == 0 else {}

    def checkpoint() -> Path:
        payload = {"config": cfg_dict, "state": state.as_dict(), "backbone": backbone.state_dict(),
                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "scaler": scaler.state_dict() if scaler is not None else None,
                   "rng": {"torch": torch.get_rng_state(),
                           "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None}}
        for name in ("head", "center"):
            if getattr(criterion, name) is not None:
                payload[name] = getattr(criterion, name).state_dict()
        return _save_checkpoint(out_dir, rank, world, payload, state.step)

    eval_metrics: dict = {}
    last_saved = {"step": state.step if resume_from is not None else -1}
    # with a time budget the step count is unknown: show rate, not a misleading ETA
    progress = Progress(None if cfg.time_budget_min else total_steps, "train-recognition", unit="step",
                        enabled=rank == 0)
    progress.n = state.step
    samples_per_s: list[float] = []
    window: list[dict] = []

    def run_eval():
        if targets:
            found = evaluate(backbone, targets, device)  # fp32, as Recognizer users will see
            eval_metrics.update(found)
            logger.log_metrics(found, step=state.step)

    def on_step(st, m) -> bool:
        if cfg.time_budget_min:
            clock["fraction"] = _budget_fraction(clock, cfg.time_budget_min, world)
        window.append(m)
        samples_per_s.append(m["samples_per_s"])
        if st.step % cfg.log_every == 0 or st.step == total_steps:
            mean = {k: float(np.mean([w[k] for w in window])) for k in window[-1]}
            mean["lr"] = m["lr"]
            st.history.append((st.step, mean["loss"], mean.get("accuracy", float("nan"))))
            logger.log_metrics({f"train.{k}": v for k, v in mean.items()} | {"epoch": st.epoch + 1}, step=st.step)
            window.clear()
        progress.update(1, loss=m["loss"], lr=m["lr"])
        if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0:
            checkpoint()
            last_saved["step"] = st.step
        if cfg.eval_every and st.step % cfg.eval_every == 0 and rank == 0:
            run_eval()
        return not (cfg.max_steps and st.step >= total_steps) and clock["fraction"] < 1.0

    t0 = clock["start"] = time.perf_counter()
    try:
        while state.step < total_steps and state.epoch < cfg.epochs and clock["fraction"] < 1.0:
            sampler.set_epoch(state.epoch, state.batch_in_epoch)
            if not train_one_epoch(state, model, criterion, loader, optimizer, scheduler, scaler, device,
                                   cfg, params, on_step, world):
                break
            state.epoch += 1
            state.batch_in_epoch = 0
            if last_saved["step"] != state.step:
                checkpoint()
                last_saved["step"] = state.step
            if not cfg.eval_every and rank == 0:
                run_eval()
    except NonFiniteLoss as exc:
        good = latest_checkpoint(out_dir)
        where = f"the last good checkpoint is {good}" if good else "no checkpoint was written before it"
        raise NonFiniteLoss(f"{exc}; training stopped, {where}") from None
    finally:
        progress.close()
    if last_saved["step"] != state.step:
        checkpoint()
    elapsed = time.perf_counter() - t0
    if rank != 0:
        return {}
    if targets and not eval_metrics:
        run_eval()
    history = state.history
    metrics = {"steps": state.step, "epochs": state.epoch, "num_classes": num_classes,
               "num_images": len(records), "world_size": world,
               "train.loss": history[-1][1] if history else float("nan"),
               "train.samples_per_s": float(np.median(samples_per_s)) if samples_per_s else 0.0,
               "train.seconds": elapsed, **eval_metrics}
    if history and not math.isnan(history[-1][2]):
        metrics["train.accuracy"] = history[-1][2]
    metrics = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
    return _write_outputs(cfg, out_dir, backbone, {"num_classes": num_classes}, state, metrics, targets,
                          device, logger)
