"""What one attempt of a pipeline step leaves for the next: the checkpoint URI a training resumes from,
and the marker that keeps a retry from repeating a configuration error.

A pod's disk and its output artifact are lost when an attempt dies, so both live under a *checkpoint
root* that outlives attempts and runs: `FACEPIPE_CHECKPOINT_ROOT` when set (`facepipe run` sets it to
its runs folder; on a cluster any s3:// or obs:// prefix), else the KFP pipeline root, read off the
step's output artifact URI (`<pipeline root>/<pipeline name>/<run id>/<task>/...`).

- Checkpoints: `<root>/checkpoints/<step>/<digest>` where the digest covers the step, its config and
  its inputs as given, so a KFP retry, a preempted pod, a ModelArts restart or a rerun with the same
  parameters (new run id, same cached inputs) finds them; another config starts afresh. A trainer's
  explicit `checkpoint_uri` is used as it is.
- Configuration errors: KFP 2.17's `set_retry` has no exit-code or error filter (it compiles to an Argo
  retryStrategy without an expression), so the pipeline's retries apply to every failure. A step that
  fails on a `ConfigError` exits with EXIT_CONFIG_ERROR and writes `<root>/config-errors/<run id>/<step>`;
  a retry of that step in the same KFP run finds it and fails again at once, before reading any data,
  with the same message. A new run (same or fixed parameters) is not blocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from facepipe.errors import ConfigError

CHECKPOINT_ROOT_ENV = "FACEPIPE_CHECKPOINT_ROOT"
KFP_RUN_ENV = "FACEPIPE_KFP_RUN_ID"  # the pod's `pipeline/runid` label (pipeline/pipeline.py)
EXIT_CONFIG_ERROR = 3  # a component's exit status for a ConfigError (1: anything else, a crash)
# KFP's default pipeline root is minio://, an S3 endpoint (AWS_ENDPOINT_URL names it)
S3_ALIASES = ("minio://",)


def digest(step: str, config: Mapping[str, Any], inputs: Mapping[str, str | None]) -> str:
    body = json.dumps({"step": step, "config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:20]


def checkpoint_root(artifact_uri: str = "") -> str:
    """FACEPIPE_CHECKPOINT_ROOT, else the KFP pipeline root the output artifact URI lies under, else ''."""
    root = os.environ.get(CHECKPOINT_ROOT_ENV, "")
    if root:
        return root.rstrip("/")
    run_id = os.environ.get(KFP_RUN_ENV, "")
    if not run_id or f"/{run_id}/" not in artifact_uri:
        return ""
    under_pipeline = artifact_uri[:artifact_uri.index(f"/{run_id}/")]  # <root>/<pipeline name>
    root = under_pipeline.rsplit("/", 1)[0]
    for alias in S3_ALIASES:
        if root.startswith(alias):
            root = "s3://" + root[len(alias):]
    return root


def checkpoint_uri(step: str, config: Mapping[str, Any], inputs: Mapping[str, str | None], root: str) -> str:
    """The trainer's checkpoint URI: its own `checkpoint_uri`, else one under `root` ('' for a step
    without checkpoints or without a root)."""
    if "checkpoint_uri" not in config:
        return ""
    if config["checkpoint_uri"]:
        return str(config["checkpoint_uri"]).rstrip("/")
    keyed = {k: v for k, v in config.items() if k != "checkpoint_uri"}
    return f"{root}/checkpoints/{step}/{digest(step, keyed, inputs)}" if root else ""


def config_error_marker(root: str, step: str) -> str:
    """Where a configuration error of this step in this KFP run is recorded ('' outside KFP)."""
    run_id = os.environ.get(KFP_RUN_ENV, "")
    return f"{root}/config-errors/{run_id}/{step}" if root and run_id else ""


def refuse_retried_config_error(marker: str) -> None:
    """In a retry of an attempt that failed on its configuration: raise that error again, at once."""
    from facepipe import storage

    if not marker:
        return
    previous = storage.read_bytes(marker)
    if previous is not None:
        raise ConfigError(f"{previous.decode(errors='replace')} (a retry of an attempt that failed on this "
                          f"configuration error; not run again: fix the parameters and start a new run)")


def record_config_error(marker: str, error: ConfigError) -> None:
    """Best effort: a marker that cannot be written only costs the retry its work, never the error."""
    from facepipe import storage

    if not marker:
        return
    with tempfile.TemporaryDirectory(prefix="facepipe-config-error-") as tmp:
        path = Path(tmp) / "error"
        path.write_text(str(error))
        try:
            storage.upload(path, marker, quiet=True)
        except Exception as exc:  # noqa: BLE001 - the ConfigError is the one to report
            print(f"[facepipe] could not record the configuration error at {marker}: {exc}", flush=True)
