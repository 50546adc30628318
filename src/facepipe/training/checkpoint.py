"""Rank-sharded checkpoints `OUT/checkpoints/step-NNNNNNNNN/rank{r}.pt`, mirrored to a checkpoint URI
when one is given (`mirror`), the resume checks, and the error a non-finite loss raises (naming the last
good checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from facepipe.config import diff
from facepipe.errors import ConfigError, DataError, FacepipeError

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"  # written by rank 0 once every rank's shard is on disk
KEEP_CHECKPOINTS = 2  # here and under the checkpoint URI


class NonFiniteLoss(FacepipeError):
    """The loss became NaN or infinite; training stops and keeps the last good checkpoint."""


def non_finite(tensors: dict) -> list[str]:
    """The keys whose floating-point tensor holds NaN or inf."""
    return [k for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


def load_torch_file(path: Path, what: str, map_location="cpu") -> dict:
    """A torch file facepipe wrote (model.pt or a checkpoint shard), loaded weights_only; anything
    else is a one-line DataError naming the file instead of torch's multi-paragraph message."""
    import pickle

    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(f"not a facepipe {what}: it holds Python objects beyond tensors (refused unloaded)",
                        path=path) from None
    except Exception as exc:  # zip, pickle and EOF errors of many types: a truncated or foreign file
        raise DataError(f"not a facepipe {what}: truncated or not a torch file ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0][:120] if str(exc).strip() else 'no detail'})",
                        path=path) from None
    if not isinstance(blob, dict):
        raise DataError(f"not a facepipe {what}: holds a {type(blob).__name__}, expected a dict", path=path)
    bad = non_finite(blob.get("state_dict", {}))
    if bad:
        raise DataError(f"{what} weights are not finite ({bad[0]} holds NaN or inf: its training diverged); "
                        f"retrain it, e.g. with a lower lr", path=path)
    return blob


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest checkpoint folder that every rank finished writing."""
    root = Path(out_dir) / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if (p / COMPLETE).exists()) if root.is_dir() else []
    return done[-1] if done else None


class Checkpoints:
    """The checkpoints of one run in `out_dir`, for the process `ctx`; `free_keys`: config keys that
    may change on resume because they do not change what is learned (the config's RESUME_FREE_KEYS);
    `data`: what identifies the training data ({"digest": manifest.content_digest(...), counts}), checked on resume;
    `uri`: a checkpoint URI (local folder, s3://, obs://) each checkpoint is also uploaded to, in the
    background, and resumed from when it holds a newer one than `out_dir`; `close()` waits for them."""

    def __init__(self, out_dir: Path, ctx, config: dict, free_keys, data: dict | None = None, uri: str = ""):
        from facepipe.training.mirror import CheckpointMirror

        self.out_dir, self.ctx, self.config, self.free_keys = Path(out_dir), ctx, config, free_keys
        self.data = data or {}
        self.saved_step = -1
        self.mirror = CheckpointMirror(uri, ctx.rank, ctx.world, self.out_dir / CHECKPOINTS / ".upload",
                                       KEEP_CHECKPOINTS) if uri else None

    def close(self, raise_errors: bool = True) -> None:
        """Wait for the uploads; a failed one raises, unless the run already fails for another reason
        (`raise_errors=False`: its own error is the one to see)."""
        if self.mirror is not None:
            self.mirror.close(raise_errors)

    @contextmanager
    def session(self, stateful: dict, state, progress):
        """Around a run's step loop: when the loop ends, the final state is saved (unless that step
        already was) and the uploads are waited for; progress is closed either way. On an error the
        uploads are still waited for, but the run's own error is the one raised."""
        try:
            yield
            if self.saved_step != state.step:
                self.save(stateful, state)
        except BaseException:
            self.close(raise_errors=False)
            raise
        finally:
            progress.close()
        self.close()

    def save(self, stateful: dict, state) -> Path:
        """Writes every object's state_dict, the TrainState and the RNG; all ranks call it together."""
        step = state.step
        bad = [f"{name}.{k}" for name, obj in stateful.items() for k in non_finite(obj.state_dict())]
        if bad:  # so that every checkpoint on disk, the "last good" one included, is finite
            raise NonFiniteLoss(f"weights became non-finite by step {step} ({bad[0]}); training stopped, "
                                f"{self._last_good()}")
        folder = self.out_dir / CHECKPOINTS / f"step-{step:09d}"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"rank{self.ctx.rank}.pt.tmp"
        cuda = self.ctx.device.type == "cuda"
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if cuda else None}
        torch.save({"config": self.config, "data": self.data, "state": state.as_dict(), "rng": rng,
                    **{name: obj.state_dict() for name, obj in stateful.items()}}, tmp)
        os.replace(tmp, folder / f"rank{self.ctx.rank}.pt")
        self.ctx.barrier()
        if self.ctx.main:
            (folder / COMPLETE).write_text(json.dumps({"step": step, "world_size": self.ctx.world}))
            for old in sorted(p for p in folder.parent.glob("step-*") if (p / COMPLETE).exists())[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
        self.ctx.barrier()
        if self.mirror is not None:
            self.mirror.push(folder, step)
        self.saved_step = step
        return folder

    def resume(self, stateful: dict) -> dict | None:
        """Loads this rank's shard of the latest complete checkpoint into `stateful` and returns the
        shard (None for a fresh run); refuses one written by another number of processes or config."""
        folder = self._fetched() if self.mirror is not None else latest_checkpoint(self.out_dir)
        if folder is None:
            return None
        info = json.loads((folder / COMPLETE).read_text())
        if info["world_size"] != self.ctx.world:
            raise ConfigError(f"{folder}: written by {info['world_size']} processes, resuming with {self.ctx.world}; "
                              f"resume with the same number of processes (the shards differ)")
        try:
            ckpt = load_torch_file(folder / f"rank{self.ctx.rank}.pt", "checkpoint", self.ctx.device)
        except DataError as exc:  # marked COMPLETE, yet truncated or foreign
            raise ConfigError(f"{exc}; delete {folder} to resume from the one before, or {self.out_dir} "
                              f"to start over") from None
        if ckpt.get("data", self.data) != self.data:  # before loading: another class count breaks the head
            was, now = ckpt["data"], self.data
            detail = ", ".join(f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in sorted(now) if was.get(k) != now[k])
            raise ConfigError(f"{self.out_dir} holds a run trained on other data ({detail}); resume with the "
                              f"same DATA_PATH, or use a new MODEL_OUTPUT_PATH to start over")
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

    def _fetched(self) -> Path | None:
        """The checkpoint to resume from: the newer of rank 0's local one and the newest complete one
        under the URI (chosen by rank 0 for all ranks), this rank's shard fetched if it is not here."""
        local = latest_checkpoint(self.out_dir)
        step = -1.0
        if self.ctx.main:
            remote = self.mirror.newest()
            step = float(max(-1 if local is None else int(local.name.split("-")[1]), -1 if remote is None else remote))
        step = int(self.ctx.broadcast(step))
        if step < 0:
            return None
        folder = self.out_dir / CHECKPOINTS / f"step-{step:09d}"
        if not ((folder / COMPLETE).exists() and (folder / f"rank{self.ctx.rank}.pt").exists()):
            self.mirror.fetch(step, folder)
        self.ctx.barrier()
        return folder

    def check_finite(self, loss: torch.Tensor, step: int, hint: str) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss became {loss.item()} at step {step}; {hint}; training stopped, {self._last_good()}")

    def _last_good(self) -> str:
        good = latest_checkpoint(self.out_dir)
        return f"the last good checkpoint is {good}" if good else "no checkpoint was written before it"
