"""How step logic reports params, metrics and artifacts without knowing MLflow: the `RunLogger` protocol.

Step functions take a `logger: RunLogger` (default `NullLogger()`); the edges pass an MLflow-backed
logger (`facepipe.tracking.MlflowLogger`) when tracking is on, tests a `MemoryLogger`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol


class RunLogger(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    # An input dataset of the run: its name, where it came from (a URI), its content digest, and
    # the step argument it fed (MLflow's dataset context); `profile` holds a few facts about it.
    def log_input(self, name: str, source: str, digest: str, context: str,
                  profile: Mapping[str, Any] | None = None) -> None: ...


class NullLogger:
    """Records nothing; the default for step logic called directly."""

    def log_params(self, params): pass
    def log_metrics(self, metrics, step=None): pass
    def log_artifact(self, path, artifact_path=None): pass
    def set_tags(self, tags): pass
    def log_input(self, name, source, digest, context, profile=None): pass


class MemoryLogger:
    """Keeps everything in lists; for tests that check what a step reports."""

    def __init__(self):
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[str, float, int | None]] = []
        self.artifacts: list[tuple[str, str | None]] = []
        self.tags: dict[str, str] = {}
        self.inputs: list[dict[str, Any]] = []

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        self.metrics += [(k, float(v), step) for k, v in metrics.items()]

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((str(path), artifact_path))

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_input(self, name, source, digest, context, profile=None):
        self.inputs.append({"name": name, "source": source, "digest": digest, "context": context,
                            "profile": dict(profile or {})})
