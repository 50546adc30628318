"""One step as a Huawei Cloud ModelArts training job: the SWR image from the images lock, OBS in and out.

ModelArts maps each OBS input into the container (`/home/ma-user/modelarts/inputs/<name>_0`) and
uploads the output folder (`/home/ma-user/modelarts/outputs/<name>_0`) to OBS when the job ends;
inputs and outputs are given as environment (`access_method: env`), so ModelArts appends no
`--<name>_url=` arguments, and the job runs the plain `facepipe <step>` command on those paths in
/home/ma-user. The step's config goes as the job's `parameters` (validated here, before anything
is sent), which the console shows and edits and ModelArts appends to the command as `--key=value`
(every step command takes those). A training step runs under torchrun, its rendezvous taken
from what ModelArts sets on each node: MA_NUM_HOSTS nodes, this one VC_TASK_INDEX, the first of
VC_WORKER_HOSTS the master, MA_NUM_GPUS ranks per node (or `--gpus-per-node`; 1 on CPU).

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

HOME = "/home/ma-user"  # where ModelArts runs a job's command (MA_HOME)
INPUT_ROOT = f"{HOME}/modelarts/inputs"
OUTPUT_ROOT = f"{HOME}/modelarts/outputs"
MASTER_PORT = 29500  # torchrun's default; MASTER_PORT in the job's environment overrides it
FINAL_PHASES = ("Completed", "Failed", "Terminated", "Abnormal")
DEFAULT_REGION = "cn-north-4"
CREDENTIAL_ENV = ("HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "HUAWEICLOUD_SDK_PROJECT_ID")
# Non-secret settings passed through to the job when set (e.g. where to track).
PASS_THROUGH_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")


# Every step with a CLI command runs as a job: its OBS inputs are its ports, in port order.
JOB_STEPS = [s.name for s in STEPS.values() if s.command]


def input_names(step: str) -> list[str]:
    """The OBS inputs (and `submit-modelarts` options): each port's argument without _dir/_path."""
    return [p.arg.removesuffix("_dir").removesuffix("_path") for p in STEPS[step].inputs] if step in JOB_STEPS else []


def job_command(step: Step, dirs: dict[str, str], out_dir: str, gpus_per_node: int = 0) -> str:
    """The job's shell command on its local folders, in /home/ma-user; a model input is its OBS folder
    (as train-* publishes it) and the command gets the model.pt inside. A training step (its config
    has `nproc_per_node`) starts under torchrun, its rendezvous read from ModelArts' environment."""
    import argparse
    import dataclasses

    from facepipe.cli import load_command

    models = {s.output for s in STEPS.values() if s.output_kind == "model"}
    paths = [p.path_in(dirs[n]) if p.artifact in models else dirs[n] for p, n in zip(step.inputs, dirs)]
    parser = argparse.ArgumentParser()
    load_command(step.command).add_arguments(parser)
    out = ["--out", out_dir] if "--out" in parser._option_string_actions else [out_dir]  # recognize's
    args = shlex.join([step.command, *paths, *out])
    if "nproc_per_node" not in {f.name for f in dataclasses.fields(step.config_class())}:
        return f"cd {HOME} && exec facepipe {args}"
    nproc = str(gpus_per_node) if gpus_per_node else '"${MA_NUM_GPUS:-0}"; [ "$NPROC" -gt 0 ] || NPROC=1'
    return (f'cd {HOME} && NPROC={nproc}; MASTER="${{VC_WORKER_HOSTS:-localhost}}"; '
            f'exec python -m torch.distributed.run --nnodes="${{MA_NUM_HOSTS:-1}}" --node_rank="${{VC_TASK_INDEX:-0}}" '
            f'--nproc_per_node="$NPROC" --master_addr="${{MASTER%%,*}}" --master_port="${{MASTER_PORT:-{MASTER_PORT}}}" '
            f'-m facepipe.cli {args}')


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
    gpus_per_node: int = 0               # 0: every GPU of the flavor (MA_NUM_GPUS), 1 process on CPU
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
    # Validate the config here (named key, allowed values); every key goes as a job parameter.
    sets = [s.split("=", 1)[0].split(".", 1)[-1] + "=" + s.split("=", 1)[1] if "=" in s else s for s in spec.sets]
    cls = step.config_class()
    cfg = to_dict(load_config(cls, spec.job, sets, section=spec.step))
    for key in cfg:
        if is_secret_key(key):
            raise ConfigError(f"--set {key}: looks like a credential; it would be visible in the job")
    dirs = {name: f"{INPUT_ROOT}/{name}_0" for name in input_names(spec.step)}
    out_dir = f"{OUTPUT_ROOT}/output_0"
    env = {k: os.environ[k] for k in PASS_THROUGH_ENV if os.environ.get(k)}
    algorithm = ma.JobAlgorithm(
        command=job_command(step, dirs, out_dir, spec.gpus_per_node),
        working_dir=HOME,
        parameters=job_parameters(cls, cfg),
        engine=ma.JobEngine(image_url=image_reference(step.image, spec.lock)),
        inputs=[ma.Input(name=name, local_dir=dirs[name], access_method="env",
                         remote=ma.InputDataInfo(obs=ma.InputDataInfoObs(obs_url=obs_url(spec.inputs[name], name))))
                for name in dirs],
        outputs=[ma.Output(name="output", local_dir=out_dir, access_method="env",
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


def job_parameters(cls, cfg: dict) -> list:
    """Every config key as a ModelArts parameter (its help as description), values as `--key=value`
    takes them: lists as JSON without spaces, since ModelArts appends them unquoted. Keys left unset
    (None) are left out: the step's default applies."""
    import dataclasses
    import json

    from huaweicloudsdkmodelarts.v1 import model as ma

    kinds = {bool: "Boolean", int: "Integer", float: "Float"}
    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
    return [ma.Parameters(name=k, value=json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else str(v),
                          description=helps.get(k, "")[:256] or None,
                          constraint=ma.ParametersConstraint(type=kinds.get(type(v), "String"), editable=True,
                                                             required=False))
            for k, v in cfg.items() if v is not None]


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



def follow(job_id: str, api=None, poll_s: float = 15.0, out=print) -> str:
    """Print the job's phase as it changes and its new log lines (first worker) until it ends;
    returns the final phase."""
    from huaweicloudsdkmodelarts.v1 import model as ma

    api = api or client()
    phase, printed = "", 0
    while True:
        status = api.show_training_job_details(ma.ShowTrainingJobDetailsRequest(training_job_id=job_id)).status
        if status.phase != phase:
            phase = status.phase
            out(f"[modelarts] job {job_id}: {phase}" + (f" ({status.secondary_phase})" if status.secondary_phase else ""))
        if phase not in ("Creating", "Pending"):
            log = api.show_training_job_logs_preview(
                ma.ShowTrainingJobLogsPreviewRequest(training_job_id=job_id, task_id="worker-0")).content or ""
            # the preview is the log so far (its tail once it is long): print what is new
            if len(log) < printed:
                printed = 0
            if log[printed:]:
                out(log[printed:].rstrip("\n"))
            printed = len(log)
        if phase in FINAL_PHASES:
            return phase
        time.sleep(poll_s)
