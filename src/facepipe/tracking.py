"""How step logic reports metrics and artifacts without knowing MLflow.

Step functions take a `logger: RunLogger` argument (default `NullLogger()`). The edges (CLI
commands, KFP components) pass an `MlflowLogger` when a tracking URI is set
(`MLFLOW_TRACKING_URI` or an explicit one), so the same step runs untracked in a unit test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Protocol


class RunLogger(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...


class NullLogger:
    """Records nothing; the default for step logic called directly."""

    def log_params(self, params): pass
    def log_metrics(self, metrics, step=None): pass
    def log_artifact(self, path, artifact_path=None): pass
    def set_tags(self, tags): pass


class MemoryLogger:
    """Keeps everything in lists; for tests that check what a step reports."""

    def __init__(self):
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[str, float, int | None]] = []
        self.artifacts: list[tuple[str, str | None]] = []
        self.tags: dict[str, str] = {}

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        self.metrics += [(k, float(v), step) for k, v in metrics.items()]

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((str(path), artifact_path))

    def set_tags(self, tags):
        self.tags.update(tags)


class MlflowLogger:
    """Logs to the active MLflow run (the edge starts and ends the run)."""

    def __init__(self, run_id: str | None = None):
        import mlflow

        self._mlflow = mlflow
        self._client = mlflow.tracking.MlflowClient()
        self.run_id = run_id or mlflow.active_run().info.run_id

    def log_params(self, params):
        from facepipe.secrets import redact_params

        clean = {k: ("" if v is None else str(v))[:6000] for k, v in redact_params(params).items()}
        for k, v in clean.items():
            self._client.log_param(self.run_id, k, v)

    def log_metrics(self, metrics, step=None):
        for k, v in metrics.items():
            self._client.log_metric(self.run_id, k, float(v), step=step or 0)

    def log_artifact(self, path, artifact_path=None):
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags):
        for k, v in tags.items():
            self._client.set_tag(self.run_id, k, str(v))


def tracking_enabled() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))
