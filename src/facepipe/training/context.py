"""The process a trainer runs in: a process group only under torchrun, its device, autocast, AMP scaler."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from facepipe.errors import ConfigError
from facepipe.steps import CPU_TORCH_ALLOWED_ENV


@dataclass
class DistContext:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast(self, value: float) -> float:
        """Rank 0's value on every rank (decisions such as stopping must be taken together)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(t, src=0)
        return float(t)


def gpu_expected(env=os.environ) -> str:
    """Why this container should have a GPU ("" when nothing says so): the NVIDIA device plugin and
    container runtime set NVIDIA_VISIBLE_DEVICES for a pod with a GPU limit (KFP's accelerator, a
    ModelArts GPU flavour, `docker run --gpus`); "void" / "none" mean none."""
    visible = env.get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if visible and visible.lower() not in ("void", "none"):
        return f"NVIDIA_VISIBLE_DEVICES={visible}"
    return ""


def check_auto_device(config_name: str, cuda_available: bool, env=os.environ) -> None:
    """device=auto in a container given a GPU that torch cannot use fails here, instead of quietly
    training on CPU while the GPU sits reserved."""
    reason = gpu_expected(env)
    if cuda_available or not reason or env.get(CPU_TORCH_ALLOWED_ENV) == "1":
        return
    variant = env.get("FACEPIPE_TORCH_VARIANT") or torch.__version__
    raise ConfigError(
        f"{config_name}.device: 'auto' in a container with a GPU limit ({reason}) but torch sees no usable "
        f"CUDA (torch {torch.__version__}, image torch variant {variant}). Use the CUDA image "
        f"(`make push-images TORCH_VARIANT=cuda`, then compile), check the node's NVIDIA driver, "
        f"or set device=cpu to train on CPU on purpose")


@contextlib.contextmanager
def distributed(device: str, deterministic: bool, config_name: str):
    """`with distributed(cfg.device, cfg.deterministic, "RecognitionTrainConfig") as ctx:`.

    A process group (NCCL on GPU, gloo on CPU) only when started by torchrun with WORLD_SIZE > 1, so
    a single process needs neither NCCL nor a rendezvous. `device`: auto | cpu | cuda.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{config_name}.device: 'cuda' requested but no GPU is visible")
    if device == "auto":
        check_auto_device(config_name, torch.cuda.is_available())
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    started = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if started:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    grouped = dist.is_available() and dist.is_initialized()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    try:
        yield DistContext(dist.get_rank() if grouped else 0, dist.get_world_size() if grouped else 1, local_rank,
                          torch.device("cuda", local_rank) if cuda else torch.device("cpu"))
    finally:
        torch.use_deterministic_algorithms(was_deterministic)  # a process-wide switch: give it back
        if started:
            dist.destroy_process_group()


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CPU, fp16 on GPU (with a GradScaler), or nothing."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling; bf16 (CPU) has float32's range and does not."""
    return torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None
