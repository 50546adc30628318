"""All MLflow code: the `MlflowLogger` the edges hand to step functions, and the pipeline's MLflow lineage.

Step functions take a `logger: RunLogger` (`facepipe.run_logger`, default `NullLogger()`). The
edges (`facepipe.edge`: CLI commands, KFP components) pass an `MlflowLogger` when a tracking URI is
set (`MLFLOW_TRACKING_URI` or an explicit one), so the same step runs untracked in a unit test.

Lineage (used by the orchestration layer): a pipeline run is a parent MLflow run
(`start_pipeline_run`, tagged with the KFP or local run id, git commit, image digests,
pipeline.yaml digest and input data digest); each step is a child run (`start_step_run`) with its
params, metrics by step and artifacts; trained models are logged as MLflow pyfunc models and
registered as model versions linked to their run (`log_model`, `register_model`). `find_runs` and `param_diff` answer "which runs" and "what changed".
Runs carry what the UI's Source, Version and Dataset columns read (`source_tags`, `MlflowLogger.log_input`);
`ui_url`, `run_url` and `compare_url` are links into the UI that open its model-training view.
Without MLFLOW_TRACKING_URI everything goes to `default_tracking_uri()`, a sqlite store under
the project's `runs/` folder (`make mlflow-ui` serves it). Params and tags are redacted of secrets.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from facepipe.run_logger import NullLogger


class MlflowLogger:
    """Logs to the active MLflow run (the edge starts and ends the run)."""

    def __init__(self, run_id: str | None = None):
        import mlflow

        self._mlflow = mlflow
        # An explicit run id may live in the default store; the fluent active run uses mlflow's URI.
        self._client = _client() if run_id else mlflow.tracking.MlflowClient()
        self.run_id = run_id or mlflow.active_run().info.run_id

    def log_params(self, params):
        from mlflow.entities import Param

        from facepipe.secrets import redact_params

        clean = {k: ("" if v is None else str(v))[:6000] for k, v in redact_params(params).items()}
        # One request per 100 params (MLflow's batch limit) instead of one per param.
        items = [Param(k, v) for k, v in clean.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics, step=None):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self._client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_artifact(self, path, artifact_path=None):
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_input(self, name, source, digest, context, profile=None):
        """One input dataset of the run (the runs table's Dataset column): `digest` is cut to
        MLflow's 36 characters, the whole one stays in the profile beside `profile`'s entries."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        from facepipe.secrets import redact

        source = redact(str(source))
        dataset = Dataset(name=name[:500], digest=digest.removeprefix("sha256:")[:36],
                          source_type=_source_type(source), source=json.dumps({"uri": source}),
                          profile=json.dumps({"digest": digest, **dict(profile or {})}, sort_keys=True))
        self._client.log_inputs(self.run_id, datasets=[
            DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])])

    def set_tags(self, tags):
        from mlflow.entities import RunTag

        from facepipe.secrets import redact_params

        clean = redact_params({k: str(v) for k, v in tags.items()})
        items = [RunTag(k, v[:5000]) for k, v in clean.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, tags=items[i:i + 100])


def _source_type(uri: str) -> str:
    """The MLflow UI's dataset source types: s3, http, local, or external (obs://, anything else)."""
    scheme = uri.split("://", 1)[0] if "://" in uri else "file"
    return {"s3": "s3", "http": "http", "https": "http", "file": "local"}.get(scheme, "external")


def tracking_enabled() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


@contextlib.contextmanager
def command_logger(run_name: str, tags: Mapping[str, str] | None = None, enabled: bool = True, entry: str = ""):
    """The CLI edges' logger: inside an MLflow run (nested under an active one) when
    MLFLOW_TRACKING_URI is set and `enabled` (rank 0 of a torchrun job), else a NullLogger.
    `entry` is what ran, for the run's Source (default ``facepipe <run_name>``)."""
    if not (enabled and tracking_enabled()):
        yield NullLogger()
        return
    import mlflow

    with mlflow.start_run(run_name=run_name, nested=mlflow.active_run() is not None):
        logger = MlflowLogger()
        logger.set_tags({**source_tags(entry or f"facepipe {run_name}"), **(tags or {})})
        yield logger


# ------------------------------------------------------------------------------------- lineage

DEFAULT_EXPERIMENT = "facepipe"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests child runs by
STEP_TAG = "facepipe.step"
# The kind MLflow 3 records for a model-training experiment (its UIs before 3.17 open such an
# experiment on its runs, not the GenAI overview). 3.17's UI goes by the link instead: `ui_url`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
COMMIT_ENV = "FACEPIPE_GIT_COMMIT"  # the commit where the code is no git checkout (an image, a wheel)


def project_dir() -> Path:
    """FACEPIPE_PROJECT_DIR, else the source checkout holding this package, else the working dir."""
    if os.environ.get("FACEPIPE_PROJECT_DIR"):
        return Path(os.environ["FACEPIPE_PROJECT_DIR"]).resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        return checkout
    return Path.cwd()


def default_tracking_uri() -> str:
    """``sqlite:///<project>/runs/mlflow.db`` (the folder is made if missing)."""
    runs = project_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{runs / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _client():
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older facepipe or by hand; a chosen kind stays
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    uri = tracking_uri()
    location = None
    if uri.startswith("sqlite:///"):
        # Keep a local store's artifacts beside its database, not in the caller's working dir.
        location = (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:
        exp = client.get_experiment_by_name(name)  # created meanwhile by a parallel step
        if exp is None:
            raise
        return exp.experiment_id


def _clean_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    from facepipe.secrets import redact_params

    return {k: str(v)[:5000] for k, v in redact_params(dict(tags or {})).items() if v is not None}


def git_commit(root: str | Path | None = None) -> str:
    """The checkout's HEAD commit (with ``-dirty`` for uncommitted changes); outside git,
    $FACEPIPE_GIT_COMMIT (what `facepipe run` passes into its step containers), else ""."""
    import subprocess

    cwd = str(root or project_dir())
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if not commit:
            return os.environ.get(COMMIT_ENV, "")
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get(COMMIT_ENV, "")


def source_tags(entry: str, commit: str | None = None) -> dict[str, str]:
    """The tags the MLflow UI's Source and Version columns read: what ran (`entry`, e.g.
    "facepipe run"), LOCAL or JOB (a KFP pod), and the git commit when known."""
    commit = git_commit() if commit is None else commit
    tags = {"mlflow.source.name": entry,
            "mlflow.source.type": "JOB" if os.environ.get("FACEPIPE_KFP_RUN_ID") else "LOCAL"}
    if commit:
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    return tags


def start_pipeline_run(experiment: str, tags: Mapping[str, Any] | None = None,
                       run_name: str | None = None) -> str:
    """Create the parent run of one pipeline run; returns its id (the run stays RUNNING).

    Expected tags (any subset): ``facepipe.kfp_run_id`` or ``facepipe.local_run_id``,
    ``facepipe.git_commit`` (filled in when missing), ``facepipe.image.<name>`` digests,
    ``facepipe.pipeline_digest``, ``facepipe.input_data_digest``. End it with `end_run`.
    """
    client = _client()
    all_tags = {"facepipe.kind": "pipeline", **_clean_tags(tags)}
    if not all_tags.get("facepipe.git_commit"):
        all_tags["facepipe.git_commit"] = git_commit()
    entry = "pipeline.yaml (KFP)" if all_tags.get("facepipe.kfp_run_id") else "facepipe run"
    all_tags = {**source_tags(entry, all_tags["facepipe.git_commit"]), **all_tags}
    name = run_name or all_tags.get("facepipe.kfp_run_id") or all_tags.get("facepipe.local_run_id") or None
    run = client.create_run(_experiment_id(client, experiment), tags=all_tags, run_name=name)
    return run.info.run_id


def start_step_run(parent_id: str | None, step_name: str, params: Mapping[str, Any] | None = None,
                   tags: Mapping[str, Any] | None = None) -> str:
    """Create a step's child run under parent_id (its experiment), log its params; returns its id.

    Without a parent the run is a top-level run in MLFLOW_EXPERIMENT_NAME (default "facepipe").
    """
    client = _client()
    if parent_id:
        experiment_id = client.get_run(parent_id).info.experiment_id
    else:
        experiment_id = _experiment_id(client, os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
    all_tags = {**source_tags(f"facepipe {step_name}"), STEP_TAG: step_name, "facepipe.kind": "step",
                **_clean_tags(tags)}
    if parent_id:
        all_tags[PARENT_TAG] = parent_id
    run = client.create_run(experiment_id, tags=all_tags, run_name=step_name)
    if params:
        MlflowLogger(run.info.run_id).log_params(params)
    return run.info.run_id


def get_run(run_id: str):
    """The MLflow Run (`.info.status`, `.info.experiment_id`, `.data.tags`, `.data.params`)."""
    return _client().get_run(run_id)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """Mark a run FINISHED, FAILED or KILLED."""
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"run status {status!r}: expected FINISHED, FAILED or KILLED")
    _client().set_terminated(run_id, status)


def register_model(run_id: str, artifact_path: str, name: str, tags: Mapping[str, Any] | None = None):
    """Register the run's artifact folder `artifact_path` as a new version of model `name`.

    Returns the MLflow ModelVersion (`.version`, `.run_id`, `.source`), linked to the run.
    """
    client = _client()
    from mlflow.exceptions import MlflowException

    run = client.get_run(run_id)
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description="facepipe model")
        except MlflowException:
            client.get_registered_model(name)  # registered meanwhile by another run
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path.strip('/')}"
    version = client.create_model_version(name, source, run_id=run_id, tags=_clean_tags(tags),
                                          await_creation_for=0)
    client.set_tag(run_id, "facepipe.registered_model", f"{name}/{version.version}")
    return version


def log_model(run_id: str, kind: str, files: Mapping[str, str | None], name: str):
    """Log a step output as an MLflow pyfunc model under the run's `model/` and register it as a
    new version of `name`; `kind` and `files` as in `facepipe.serving.mlflow_model.save_model`."""
    import tempfile

    from facepipe.serving.mlflow_model import save_model

    with tempfile.TemporaryDirectory(prefix="facepipe-mlmodel-") as tmp:
        _client().log_artifacts(run_id, str(save_model(kind, dict(files), Path(tmp) / "model")), "model")
    return register_model(run_id, "model", name)


def ui_url(server: str, route: str) -> str:
    """A link into the MLflow UI at `server` (``http://HOST:PORT``) that opens in its model-training
    view. MLflow 3.17 picks GenAI or model-training pages from the link's `workflowType` (else the
    browser's last choice, GenAI at first), not from the experiment's kind tag, so links say it."""
    sep = "&" if "?" in route else "?"
    return f"{server.rstrip('/')}/#/{route.strip('/')}{sep}workflowType=machine_learning"


def run_url(server: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """A run's page; `tab` e.g. ``artifacts`` or ``artifacts/plots/roc.png`` (that file opened)."""
    return ui_url(server, f"experiments/{experiment_id}/runs/{run_id}/{tab}")


def compare_url(server: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    """The UI's side-by-side view of runs: params (differences highlighted), metrics, tags."""
    from urllib.parse import quote

    as_list = lambda ids: quote(json.dumps(list(dict.fromkeys(ids)), separators=(",", ":")), safe="")  # noqa: E731
    return ui_url(server, f"compare-runs?runs={as_list(run_ids)}&experiments={as_list(experiment_ids)}")


def find_runs(experiment: str | None = None, *, parent_id: str | None = None, step: str | None = None,
              tags: Mapping[str, str] | None = None, filter_string: str = "", max_results: int = 1000):
    """Runs of an experiment (default: all), newest first, narrowed by parent, step or tag values."""
    client = _client()
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    clauses = [filter_string] if filter_string else []
    wanted = dict(tags or {})
    if parent_id:
        wanted[PARENT_TAG] = parent_id
    if step:
        wanted[STEP_TAG] = step
    for k, v in wanted.items():
        clauses.append(f"tags.`{k}` = '{str(v).replace(chr(39), chr(39) * 2)}'")
    return list(client.search_runs(ids, " and ".join(clauses), max_results=max_results,
                                   order_by=["attributes.start_time DESC"]))


def param_diff(run_a: str, run_b: str) -> dict[str, tuple[str | None, str | None]]:
    """The params that differ between two runs: name -> (value in a, value in b); None = absent."""
    a, b = run_data(run_a)["params"], run_data(run_b)["params"]
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def run_data(run_id: str, uri: str | None = None) -> dict:
    """One run's params, metrics (latest values), experiment id and tags, from `uri` (default: ours)."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=uri or tracking_uri()).get_run(run_id)
    return {"params": dict(run.data.params), "metrics": dict(run.data.metrics),
            "experiment_id": run.info.experiment_id, "tags": dict(run.data.tags)}


UI_ADDRESS = "http://127.0.0.1:5000"  # where `make mlflow-ui` serves the local store


def ui_base(uri: str | None = None) -> str:
    """The MLflow UI of a tracking URI: a tracking server is its own UI; a local store is shown by
    `make mlflow-ui`."""
    uri = uri or tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_ADDRESS
