"""One step as a Huawei Cloud ModelArts training job: the SWR image from the images lock, OBS in and out.

ModelArts maps each OBS input into the container (`/home/ma-user/modelarts/inputs/<name>_0`) and
uploads the output folder (`/home/ma-user/modelarts/outputs/<name>_0`) to OBS when the job ends,
so the job runs the plain `facepipe <step>` command on local paths. The step's config is carried
as `--set key=value` arguments (validated here, before anything is sent).

Credentials come from the environment and are used only to sign the request; they never go into
the job (ModelArts shows a job's command and environment in its console):
HUAWEICLOUD_SDK_AK, HUAWEICLOUD_SDK_SK, HUAWEICLOUD_SDK_PROJECT_ID, and MODELARTS_REGION
(default cn-north-4) or MODELARTS_ENDPOINT.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from dataclasses import dataclass, field

from facepipe.errors import ConfigError, StorageError
from facepipe.steps import STEPS, Step

INPUT_ROOT = "/home/ma-user/modelarts/inputs"
OUTPUT_ROOT = "/home/ma-user/modelarts/outputs"
DEFAULT_REGION = "cn-north-4"
CREDENTIAL_ENV = ("HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "HUAWEICLOUD_SDK_PROJECT_ID")
# Non-secret settings passed through to the job when set (e.g. where to track).
PASS_THROUGH_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")


# Every step with a CLI command runs as a job: its OBS inputs are its ports, in port order.
JOB_STEPS = [s.name for s in STEPS.values() if s.command]


def input_names(step: str) -> list[str]:
    """The OBS inputs (and `submit-modelarts` options): each port's argument without _dir/_path."""
    return [p.arg.removesuffix("_dir").removesuffix("_path") for p in STEPS[step].inputs] if step in JOB_STEPS else []


def job_command(step: Step, dirs: dict[str, str], out_dir: str, overrides: list[str]) -> str:
    """`facepipe <command> <inputs in port order> <out> --set ...` on the job's local folders; a model
    input is its OBS folder (as train-* publishes it) and the command gets the model.pt inside."""
    import argparse

    from facepipe.cli import load_command

    models = {s.output for s in STEPS.values() if s.output_kind == "model"}
    paths = [p.path_in(dirs[n]) if p.artifact in models else dirs[n] for p, n in zip(step.inputs, dirs)]
    parser = argparse.ArgumentParser()
    load_command(step.command).add_arguments(parser)
    out = ["--out", out_dir] if "--out" in parser._option_string_actions else [out_dir]  # recognize's
    return shlex.join(["facepipe", step.command, *paths, *out] + [w for o in overrides for w in ("--set", o)])


def obs_url(uri: str, what: str) -> str:
    """`obs://bucket/path` -> `/bucket/path/` (the form ModelArts expects)."""
    m = re.fullmatch(r"obs://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/.*)?", uri or "")
    if not m:
        raise ConfigError(f"--{what} {uri!r}: expected an OBS folder URI, obs://BUCKET/PATH")
    path = (m.group(2) or "/").rstrip("/") + "/"
    return f"/{m.group(1)}{path}"


def _job_name(step: str) -> str:
    return f"facepipe-{step.replace('_', '-')}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


@dataclass
class TrainingJobSpec:
    step: str
    inputs: dict[str, str]               # name -> obs:// URI
    output: str                          # obs:// URI
    flavor: str
    sets: list[str] = field(default_factory=list)
    job: str | None = None
    name: str | None = None
    node_count: int = 1
    description: str = ""
    lock: str | None = None


def build_request(spec: TrainingJobSpec):
    """The CreateTrainingJobRequest (huaweicloudsdkmodelarts v1, POST /v2/{project_id}/training-jobs)."""
    from huaweicloudsdkmodelarts.v1 import model as ma

    from facepipe.config import load_config, to_dict
    from facepipe.orchestration.images import image_reference
    from facepipe.secrets import is_secret_key

    if spec.step not in JOB_STEPS:
        raise ConfigError(f"unknown step {spec.step!r} for ModelArts; steps: {JOB_STEPS}")
    step = STEPS[spec.step]
    missing = [n for n in input_names(spec.step) if not spec.inputs.get(n)]
    if missing:
        raise ConfigError(f"step {spec.step} needs --{' --'.join(missing)} (OBS URIs)")
    if not spec.flavor:
        raise ConfigError("--flavor (or MODELARTS_FLAVOR) is required: a ModelArts resource flavor ID, "
                          "e.g. the GPU flavor your project lists for training jobs")
    # Validate the config here (named key, allowed values), then carry what differs from defaults.
    sets = [s.split("=", 1)[0].split(".", 1)[-1] + "=" + s.split("=", 1)[1] if "=" in s else s for s in spec.sets]
    cls = step.config_class()
    cfg = to_dict(load_config(cls, spec.job, sets, section=spec.step))
    defaults = to_dict(cls())
    overrides = [f"{k}={_cli_value(v)}" for k, v in cfg.items() if v != defaults.get(k)]
    for item in overrides:
        if is_secret_key(item.split("=", 1)[0]):
            raise ConfigError(f"--set {item.split('=', 1)[0]}: looks like a credential; it would be visible in the job")
    dirs = {name: f"{INPUT_ROOT}/{name}_0" for name in input_names(spec.step)}
    out_dir = f"{OUTPUT_ROOT}/output_0"
    command = job_command(step, dirs, out_dir, overrides)
    env = {k: os.environ[k] for k in PASS_THROUGH_ENV if os.environ.get(k)}
    algorithm = ma.JobAlgorithm(
        command=command,
        engine=ma.JobEngine(image_url=image_reference(step.image, spec.lock)),
        inputs=[ma.Input(name=name, local_dir=dirs[name],
                         remote=ma.InputDataInfo(obs=ma.InputDataInfoObs(obs_url=obs_url(spec.inputs[name], name))))
                for name in dirs],
        outputs=[ma.Output(name="output", local_dir=out_dir,
                           remote=ma.Remote(obs=ma.RemoteObs(obs_url=obs_url(spec.output, "output"))))],
        environments=env or None,
    )
    body = ma.Job(
        kind="job",
        metadata=ma.JobMetadata(name=spec.name or _job_name(spec.step),
                                description=(spec.description or f"facepipe {spec.step}")[:256]),
        algorithm=algorithm,
        spec=ma.Spec(resource=ma.SpecResource(flavor_id=spec.flavor, node_count=spec.node_count)),
    )
    return ma.CreateTrainingJobRequest(body=body)


def _cli_value(value) -> str:
    import json

    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else str(value)


def client():
    """A ModelArtsClient signed with the environment's AK/SK for MODELARTS_REGION / MODELARTS_ENDPOINT."""
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkmodelarts.v1 import ModelArtsClient
    from huaweicloudsdkmodelarts.v1.region.modelarts_region import ModelArtsRegion

    missing = [k for k in CREDENTIAL_ENV if not os.environ.get(k)]
    if missing:
        raise StorageError(f"ModelArts credentials missing: set {', '.join(missing)}")
    credentials = BasicCredentials(os.environ["HUAWEICLOUD_SDK_AK"], os.environ["HUAWEICLOUD_SDK_SK"],
                                   os.environ["HUAWEICLOUD_SDK_PROJECT_ID"])
    builder = ModelArtsClient.new_builder().with_credentials(credentials)
    if os.environ.get("MODELARTS_ENDPOINT"):
        builder = builder.with_endpoints([os.environ["MODELARTS_ENDPOINT"]])
    else:
        builder = builder.with_region(ModelArtsRegion.value_of(os.environ.get("MODELARTS_REGION", DEFAULT_REGION)))
    return builder.build()


def submit(request) -> dict:
    """Send the request; returns the created job's id and name."""
    response = client().create_training_job(request)
    metadata = getattr(response, "metadata", None)
    return {"id": getattr(metadata, "id", None), "name": getattr(metadata, "name", None)}


def without_nulls(value):
    """A request body as JSON-ready data without the SDK's unset (None) fields."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value

