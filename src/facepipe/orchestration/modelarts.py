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
from typing import Iterable

from facepipe.errors import ConfigError, StorageError

INPUT_ROOT = "/home/ma-user/modelarts/inputs"
OUTPUT_ROOT = "/home/ma-user/modelarts/outputs"
DEFAULT_REGION = "cn-north-4"
CREDENTIAL_ENV = ("HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "HUAWEICLOUD_SDK_PROJECT_ID")
# Non-secret settings passed through to the job when set (e.g. where to track).
PASS_THROUGH_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")


@dataclass(frozen=True)
class StepJob:
    """How one step runs as a job: its image, its OBS inputs, and its command line."""

    image: str                  # key in the images lock
    inputs: tuple[str, ...]     # names of OBS inputs (also the CLI option names)
    command: str                # format string over {input dirs}, {out} and {sets}


STEP_JOBS = {
    "pack": StepJob("facepipe-data", ("data",), "facepipe pack {data} {out} {sets}"),
    "train_detection": StepJob("facepipe-train", ("data",), "facepipe train-detection {data} {out} {sets}"),
    "train_recognition": StepJob("facepipe-train", ("data",), "facepipe train-recognition {data} {out} {sets}"),
    "build_gallery": StepJob("facepipe-train", ("data", "detector", "recognizer"),
                             "facepipe build-gallery {data} {detector}/model.pt {recognizer}/model.pt {out} {sets}"),
    "recognize": StepJob("facepipe-train", ("data", "gallery", "detector", "recognizer"),
                         "facepipe recognize {data} {gallery} {detector}/model.pt {recognizer}/model.pt "
                         "--out {out} {sets}"),
}


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
    from facepipe.steps import STEPS

    if spec.step not in STEP_JOBS:
        raise ConfigError(f"unknown step {spec.step!r} for ModelArts; steps: {sorted(STEP_JOBS)}")
    step_job = STEP_JOBS[spec.step]
    missing = [n for n in step_job.inputs if not spec.inputs.get(n)]
    if missing:
        raise ConfigError(f"step {spec.step} needs --{' --'.join(missing)} (OBS URIs)")
    if not spec.flavor:
        raise ConfigError("--flavor (or MODELARTS_FLAVOR) is required: a ModelArts resource flavor ID, "
                          "e.g. the GPU flavor your project lists for training jobs")
    # Validate the config here (named key, allowed values), then carry what differs from defaults.
    sets = [s.split("=", 1)[0].split(".", 1)[-1] + "=" + s.split("=", 1)[1] if "=" in s else s for s in spec.sets]
    cls = STEPS[spec.step].config_class()
    cfg = to_dict(load_config(cls, spec.job, sets, section=spec.step))
    defaults = to_dict(cls())
    overrides = [f"{k}={_cli_value(v)}" for k, v in cfg.items() if v != defaults.get(k)]
    for item in overrides:
        if is_secret_key(item.split("=", 1)[0]):
            raise ConfigError(f"--set {item.split('=', 1)[0]}: looks like a credential; it would be visible in the job")
    dirs = {name: f"{INPUT_ROOT}/{name}_0" for name in step_job.inputs}
    out_dir = f"{OUTPUT_ROOT}/output_0"
    command = step_job.command.format(
        **{k: shlex.quote(v) for k, v in dirs.items()}, out=shlex.quote(out_dir),
        sets=" ".join(f"--set {shlex.quote(o)}" for o in overrides)).strip()
    env = {k: os.environ[k] for k in PASS_THROUGH_ENV if os.environ.get(k)}
    algorithm = ma.JobAlgorithm(
        command=command,
        engine=ma.JobEngine(image_url=image_reference(step_job.image, spec.lock)),
        inputs=[ma.Input(name=name, local_dir=dirs[name],
                         remote=ma.InputDataInfo(obs=ma.InputDataInfoObs(obs_url=obs_url(spec.inputs[name], name))))
                for name in step_job.inputs],
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


def input_names(step: str) -> Iterable[str]:
    return STEP_JOBS[step].inputs if step in STEP_JOBS else ()
