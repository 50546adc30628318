"""Submit the compiled pipeline.yaml to a Kubeflow Pipelines backend through kfp.Client.

Parameters resolve exactly as for a local run (job file, then `--set`, validated against the step
configs); the pipeline root must be object storage (`s3://`, `minio://`, `gs://`; OBS through its
S3-compatible endpoint). Caching stays on per task, so resubmitting with one changed parameter
reruns that step and its downstream steps and reuses the rest; `rerun_step` forces one step to
execute even with unchanged parameters (its cache is turned off in the submitted spec).

The MLflow parent run is made on the cluster by the run's `begin-run` task (in the MLflow
experiment named like the KFP one: the `mlflow_experiment` parameter), tagged with the KFP run id;
the tasks find it through that tag (their pods get the run id from the `pipeline/runid` label,
which is not a task input, so it does not defeat caching) and `finish-run` ends it.

A Kubeflow behind a login: `existing_token` (a bearer token, e.g. an OIDC id token) and `cookies`
(e.g. `authservice_session=...` copied from a browser session) go to kfp.Client as the kfp CLI's
`--existing-token` does; they come from the command line or FACEPIPE_KFP_TOKEN /
FACEPIPE_KFP_COOKIES, are never part of the Submission (which `--dry-run` prints), and are
blanked out of any error message.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from facepipe.errors import ConfigError, FacepipeError
from facepipe.orchestration.local import DEFAULT_PIPELINE, EXPERIMENT, PipelineSpec, _pipeline_steps
from facepipe.orchestration.params import Arguments

REMOTE_ROOTS = ("s3://", "minio://", "gs://")
TOKEN_ENV = "FACEPIPE_KFP_TOKEN"
COOKIES_ENV = "FACEPIPE_KFP_COOKIES"


@dataclass(frozen=True)
class KfpAuth:
    """Credentials for the KFP API (kfp.Client's existing_token / cookies); repr shows no values."""

    existing_token: str | None = field(default=None, repr=False)
    cookies: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, existing_token: str | None = None, cookies: str | None = None) -> "KfpAuth":
        return cls(existing_token or os.environ.get(TOKEN_ENV) or None, cookies or os.environ.get(COOKIES_ENV) or None)

    def hide(self, text: str) -> str:
        for value in (self.existing_token, self.cookies):
            if value:
                text = text.replace(value, "***")
        return text


@dataclass
class Submission:
    host: str
    pipeline_file: str
    arguments: dict[str, Any]
    experiment: str
    run_name: str
    pipeline_root: str | None
    enable_caching: bool | None
    namespace: str | None = None
    changed: dict[str, Any] = field(default_factory=dict)


def prepare(host: str, job: str | Path | None = None, sets: Iterable[str] | None = None, *,
            pipeline: str | Path | None = None, experiment: str = EXPERIMENT, run_name: str | None = None,
            pipeline_root: str | None = None, cache: bool = True, rerun_step: str | None = None,
            namespace: str | None = None) -> Submission:
    """Validate everything and write the spec to submit; nothing is sent."""
    import time

    from facepipe.orchestration.local import rerun_plan

    if not host:
        raise ConfigError("--host is required: the KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    if pipeline_root and not pipeline_root.startswith(REMOTE_ROOTS):
        raise ConfigError(f"--pipeline-root {pipeline_root!r}: a cluster's pipeline root is object storage "
                          f"({', '.join(REMOTE_ROOTS)}...); OBS works through its S3 endpoint as s3://")
    spec = PipelineSpec(pipeline or DEFAULT_PIPELINE)
    model = Arguments(_pipeline_steps(spec))
    spec.check_parameters(model.parameters)
    values = model.resolve(job, sets)
    values["mlflow_experiment"] = values.get("mlflow_experiment") or experiment
    # Send only what differs from the spec's defaults: the KFP UI then shows what this run changed.
    defaults = {name: p.get("defaultValue") for name, p in spec.parameters.items()}
    changed = {k: v for k, v in values.items() if defaults.get(k) != v}
    path = str(spec.path)
    if rerun_step:
        task, _, _ = rerun_plan(spec, rerun_step)
        handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="facepipe-rerun-", delete=False)
        with handle:
            handle.write(spec.variant(no_cache=[task], retries=True))
        path = handle.name
    name = run_name or f"facepipe-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    return Submission(host=host, pipeline_file=path, arguments=changed, experiment=experiment, run_name=name,
                      pipeline_root=pipeline_root, enable_caching=None if cache else False,
                      namespace=namespace, changed=changed)


def submit(sub: Submission, auth: KfpAuth | None = None) -> dict[str, str]:
    """Create the run on the backend; returns its id, name and experiment."""
    import kfp

    from facepipe.secrets import redact

    auth = auth or KfpAuth.from_env()
    try:
        client = kfp.Client(host=sub.host, namespace=sub.namespace or "kubeflow",
                            existing_token=auth.existing_token, cookies=auth.cookies)
        result = client.create_run_from_pipeline_package(
            sub.pipeline_file, arguments=sub.arguments, run_name=sub.run_name, experiment_name=sub.experiment,
            namespace=sub.namespace, pipeline_root=sub.pipeline_root, enable_caching=sub.enable_caching)
    except Exception as exc:  # connection refused, HTTP errors from the API server, auth failures
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise FacepipeError(f"KFP at {sub.host} refused or could not be reached: "
                            f"{auth.hide(redact(lines[-1] if lines else type(exc).__name__))[:500]}") from None
    return {"run_id": result.run_id, "run_name": sub.run_name, "experiment": sub.experiment}
