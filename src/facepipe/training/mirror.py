"""Rank checkpoints mirrored to a checkpoint URI (a local folder, s3:// or obs://), so that a new attempt
on another machine (KFP retry, preempted pod, ModelArts restart, rerun) resumes where the last one stopped.

Layout under the URI, one folder per rank so that no rank waits for another to mark a step complete:

    <uri>/step-NNNNNNNNN/rank{r}/rank{r}.pt   this rank's shard
    <uri>/step-NNNNNNNNN/rank{r}/COMPLETE     {"step", "world_size"} (the same in every rank's folder)
    <uri>/step-NNNNNNNNN/rank{r}/manifest.json  written last by facepipe.storage.upload

A step is complete there when rank 0's COMPLETE names the world size W and each of rank0..rank{W-1}
has its manifest. Uploads run in one background thread per process, after the local save: training
goes on meanwhile; a newer checkpoint replaces one still waiting (never one being uploaded); the first
failure is raised by the next `push` or by `close`. Rank 0 prunes the URI to the newest `keep`
complete steps after each of its uploads.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
from pathlib import Path

from facepipe import storage
from facepipe.errors import ConfigError, StorageError

COMPLETE = "COMPLETE"
STEP_FOLDER = re.compile(r"^step-(\d{9})/?$")


def checkpoint_uri_field():
    """The trainers' `checkpoint_uri` config key (free to change on resume: it moves no weights)."""
    import dataclasses

    return dataclasses.field(default="", metadata={"help": (
        "where checkpoints are also uploaded and resumed from (a folder, s3:// or obs:// URI); empty: a "
        "pipeline step uses <pipeline root>/checkpoints/<step>/<config and inputs digest>, the CLI none")})


class CheckpointMirror:
    """The checkpoint URI of one run, seen from rank `rank` of `world`; `staging`: a local folder on the
    same filesystem as the checkpoints (shards are hard-linked there, so local pruning cannot remove a
    file while it uploads)."""

    def __init__(self, uri: str, rank: int, world: int, staging: Path, keep: int):
        self.uri, self.rank, self.world, self.staging, self.keep = uri.rstrip("/"), rank, world, Path(staging), keep
        self._lock = threading.Condition()
        self._pending: tuple[int, Path] | None = None
        self._busy = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # ---- saving

    def push(self, folder: Path, step: int) -> None:
        """Queue this rank's shard of the local checkpoint `folder` (with its COMPLETE) for upload."""
        self._raise_failure()
        stage = self.staging / f"step-{step:09d}-rank{self.rank}"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        for name in (f"rank{self.rank}.pt", COMPLETE):
            try:
                os.link(folder / name, stage / name)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(folder / name, stage / name)
        with self._lock:
            if self._pending is not None:  # superseded before its upload began: the newer one is enough
                shutil.rmtree(self._pending[1], ignore_errors=True)
            self._pending = (step, stage)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="facepipe-checkpoint-upload", daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def close(self, raise_errors: bool = True) -> None:
        """Wait until the queued uploads are done; raise the first failure (unless `raise_errors` is off,
        when the caller already fails for another reason)."""
        with self._lock:
            while self._pending is not None or self._busy:
                if self._error is not None:
                    break
                self._lock.wait(0.5)
        with contextlib.suppress(OSError):  # shared by the ranks of a node: only the last one removes it
            self.staging.rmdir()
        if raise_errors:
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise StorageError(f"uploading a checkpoint to {self.uri} failed: {error}") from error

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._pending is None:
                    self._lock.wait()
                (step, stage), self._pending, self._busy = self._pending, None, True
            try:
                storage.upload(stage, f"{self._step_uri(step)}/rank{self.rank}", quiet=True)
                if self.rank == 0:
                    self._prune()
            except BaseException as exc:  # surfaced in the training thread by push/close
                with self._lock:
                    self._error = exc
            finally:
                shutil.rmtree(stage, ignore_errors=True)
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def _prune(self) -> None:
        """Remove every step folder older than the newest `keep` complete ones (newer ones may be
        uploads of other ranks still under way)."""
        steps = self.steps()
        complete = [s for s in steps if self.is_complete(s)]
        if len(complete) <= self.keep:
            return
        oldest_kept = complete[-self.keep]
        for s in steps:
            if s < oldest_kept:
                storage.remove(self._step_uri(s))

    # ---- resuming

    def steps(self) -> list[int]:
        """The step folders under the URI, oldest first (complete or not)."""
        if not storage.exists(self.uri):
            return []
        found = (STEP_FOLDER.match(e.name) for e in storage.ls(self.uri) if e.is_dir)
        return sorted(int(m.group(1)) for m in found if m)

    def is_complete(self, step: int) -> bool:
        raw = storage.read_bytes(f"{self._step_uri(step)}/rank0/{COMPLETE}")
        if raw is None or not storage.is_complete(f"{self._step_uri(step)}/rank0"):
            return False
        world = json.loads(raw)["world_size"]
        return all(storage.is_complete(f"{self._step_uri(step)}/rank{r}") for r in range(1, world))

    def newest(self) -> int | None:
        """The newest complete step under the URI."""
        for step in reversed(self.steps()):
            if self.is_complete(step):
                return step
        return None

    def fetch(self, step: int, folder: Path) -> None:
        """This rank's shard of `step` and its COMPLETE into the local checkpoint `folder` (checksums
        verified by the download; the marker last, so a broken fetch never looks like a checkpoint)."""
        src = f"{self._step_uri(step)}/rank{self.rank}"
        if not storage.is_complete(src):
            raise ConfigError(f"{src}: no complete shard for rank {self.rank} of step {step} (written by "
                              f"another number of processes?); resume with the world size that wrote it")
        tmp = folder.parent / f".fetch-{folder.name}-rank{self.rank}"
        shutil.rmtree(tmp, ignore_errors=True)
        storage.download(src, tmp, quiet=True)
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / f"rank{self.rank}.pt", folder / f"rank{self.rank}.pt")
        os.replace(tmp / COMPLETE, folder / COMPLETE)  # ranks of one node write the same bytes
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"fetched the checkpoint of step {step} (rank {self.rank}) from {src}", flush=True)

    def _step_uri(self, step: int) -> str:
        return f"{self.uri}/step-{step:09d}"
