"""Rank-sharded checkpoints `OUT/checkpoints/step-NNNNNNNNN/rank{r}.pt`, the resume checks, and the
error a non-finite loss raises (naming the last good checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from facepipe.config import diff
from facepipe.errors import ConfigError, FacepipeError

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"  # written by rank 0 once every rank's shard is on disk
KEEP_CHECKPOINTS = 2


class NonFiniteLoss(FacepipeError):
    """The loss became NaN or infinite; training stops and keeps the last good checkpoint."""


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest checkpoint folder that every rank finished writing."""
    root = Path(out_dir) / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if (p / COMPLETE).exists()) if root.is_dir() else []
    return done[-1] if done else None


class Checkpoints:
    """The checkpoints of one run in `out_dir`, for the process `ctx`; `free_keys`: config keys that
    may change on resume because they do not change what is learned (the config's RESUME_FREE_KEYS)."""

    def __init__(self, out_dir: Path, ctx, config: dict, free_keys):
        self.out_dir, self.ctx, self.config, self.free_keys = Path(out_dir), ctx, config, free_keys
        self.saved_step = -1

    def save(self, stateful: dict, state) -> Path:
        """Writes every object's state_dict, the TrainState and the RNG; all ranks call it together."""
        step = state.step
        folder = self.out_dir / CHECKPOINTS / f"step-{step:09d}"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"rank{self.ctx.rank}.pt.tmp"
        cuda = self.ctx.device.type == "cuda"
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if cuda else None}
        torch.save({"config": self.config, "state": state.as_dict(), "rng": rng,
                    **{name: obj.state_dict() for name, obj in stateful.items()}}, tmp)
        os.replace(tmp, folder / f"rank{self.ctx.rank}.pt")
        self.ctx.barrier()
        if self.ctx.main:
            (folder / COMPLETE).write_text(json.dumps({"step": step, "world_size": self.ctx.world}))
            for old in sorted(p for p in folder.parent.glob("step-*") if (p / COMPLETE).exists())[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
        self.ctx.barrier()
        self.saved_step = step
        return folder

    def resume(self, stateful: dict) -> dict | None:
        """Loads this rank's shard of the latest complete checkpoint into `stateful` and returns the
        shard (None for a fresh run); refuses one written by another number of processes or config."""
        folder = latest_checkpoint(self.out_dir)
        if folder is None:
            return None
        info = json.loads((folder / COMPLETE).read_text())
        if info["world_size"] != self.ctx.world:
            raise ConfigError(f"{folder}: written by {info['world_size']} processes, resuming with {self.ctx.world}; "
                              f"resume with the same number of processes (the shards differ)")
        try:
            ckpt = torch.load(folder / f"rank{self.ctx.rank}.pt", map_location=self.ctx.device, weights_only=True)
        except Exception as exc:  # torch raises several types for a truncated or foreign file
            raise ConfigError(f"{folder}: cannot load the resume checkpoint ({exc}); delete it to start over") from None
        saved = ckpt["config"]
        changed = diff(saved, self.config, ignore=self.free_keys)
        if changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {self.config.get(k)!r}" for k in changed)
            raise ConfigError(f"{self.out_dir} holds a run with a different config ({detail}); keys that differ: "
                              f"{changed}. Use the same settings to resume, or a new MODEL_OUTPUT_PATH to start over")
        for name, obj in stateful.items():
            obj.load_state_dict(ckpt[name])
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())  # dropout, Partial FC sampling continue as if uninterrupted
        if ckpt["rng"]["cuda"] is not None and self.ctx.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu())
        self.saved_step = ckpt["state"]["step"]
        print(f"resuming from {folder} (step {self.saved_step})", flush=True)
        return ckpt

    def check_finite(self, loss: torch.Tensor, step: int, hint: str) -> None:
        if not torch.isfinite(loss):
            good = latest_checkpoint(self.out_dir)
            where = f"the last good checkpoint is {good}" if good else "no checkpoint was written before it"
            raise NonFiniteLoss(f"loss became {loss.item()} at step {step}; {hint}; training stopped, {where}")
