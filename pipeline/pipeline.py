"""The facepipe Kubeflow pipeline: data (given or synthetic) -> pack -> train detection -> train recognition -> gallery -> evaluate.

Its parameters are every step config key, named `<step>__<key>` (facepipe.orchestration.params),
plus the run-level `data_uri`, `output_uri`, `mlflow_parent_run_id` and `mlflow_experiment`.
Components stay thin (components/<step>/component.py), and the tasks, their resources and their
wiring come from the step records (facepipe.steps): a task's input artifacts are the outputs of the
steps that write them. What only matters on a cluster lives here: retries with backoff, and
credentials from Kubernetes secrets (never in the spec: the secrets hold them, pipeline.yaml only
names them).

Around the steps (pipeline/run_tasks.py), inside one `dsl.ExitHandler`: `begin-run` makes the
run's MLflow parent before any step; `data-digest` turns a given `data_uri` into its manifest
digest, an input of pack, so new data at the same URI misses pack's cache; a `publish-<step>`
task per output copies it to `output_uri` (so the target is no step's cache key); `record-run`
tags the parent with each step executed or reused. The handler's exit task `finish-run` ends the
parent with the run's real status, after a failure too. KFP returns no pipeline outputs from
inside an exit handler: the steps' artifacts are found through their tasks (and `record-run`).
"""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass

from kfp import dsl, kubernetes

from facepipe.data.shards import UNPACK_DIR_ENV
from facepipe.orchestration.params import RUN_PARAMETERS, pipeline_parameters, step_parameters
from facepipe.steps import CPU_TORCH_ALLOWED_ENV, PIPELINE_STEPS, STEPS, Step
from pipeline import run_tasks

PIPELINE_NAME = "facepipe"
# synth has no task of its own: the pack task runs it (or localizes the given `data_uri` instead)
# and outputs its `images` artifact beside `records`.
HOSTED = {"synth": "pack"}
TASKS = [s for s in PIPELINE_STEPS if s not in HOSTED]

# Kubernetes secrets the tasks read credentials from (created once per namespace; docs/pipeline.md).
SECRETS = {
    "facepipe-s3": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"],
    "facepipe-obs": ["OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY", "OBS_ENDPOINT"],
    "facepipe-mlflow": ["MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                        "MLFLOW_S3_ENDPOINT_URL"],
}
ACCELERATOR = "nvidia.com/gpu"
# The image pull secret every task names (`kubectl create secret docker-registry`, docs/pipeline.md);
# a compile option, since the spec has no pipeline parameter for it.
PULL_SECRET_ENV = "FACEPIPE_IMAGE_PULL_SECRET"
DEFAULT_PULL_SECRET = "swr-pull"
# Where the KFP launcher puts an s3:// pipeline root's artifacts inside the container (kfp.dsl's
# _S3_LOCAL_MOUNT_PREFIX): the task's disk volume is mounted there.
ARTIFACT_MOUNT = "/s3"
ARTIFACT_TYPES = {"dataset": dsl.Dataset, "model": dsl.Model, "artifact": dsl.Artifact}


@dataclass(frozen=True)
class ClusterOptions:
    """What `python -m pipeline.compile` decides about the cluster the spec is for."""

    pull_secret: str = DEFAULT_PULL_SECRET  # "" = none (public images)
    allow_cpu_torch_on_gpu: bool = False
    # For the GPU tasks only: node labels to match ((key, value), ...) and taints to tolerate
    # ((key, effect), ...; operator Exists), e.g. a GPU node pool's label and its nvidia.com/gpu taint.
    gpu_node_selector: tuple[tuple[str, str], ...] = ()
    gpu_tolerations: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls, **given) -> "ClusterOptions":
        secret = given.pop("pull_secret", None)
        if secret is None:
            secret = os.environ.get(PULL_SECRET_ENV, DEFAULT_PULL_SECRET)
        return cls(pull_secret=secret, **given)


def _pod_settings(task: dsl.PipelineTask, step: Step, options: ClusterOptions) -> None:
    """/dev/shm, the artifact disk and GPU node placement: what a step's pod needs beyond requests,
    secrets and the pull secret (_environment)."""
    if step.resources.shm:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=step.resources.shm)
    if step.resources.disk:
        # kfp 2.17 cannot request ephemeral-storage (kubeflow/pipelines#11137, #13965 open). An
        # emptyDir of the step's size over the launcher's artifact folder bounds what the task may
        # write there (evicted beyond it instead of filling the node). Not a generic ephemeral
        # volume: a fresh claim's root belongs to root, and the launcher runs as the image's uid 1000.
        kubernetes.empty_dir_mount(task, volume_name="artifact-disk", mount_path=ARTIFACT_MOUNT,
                                   size_limit=step.resources.disk)
        task.set_env_variable(UNPACK_DIR_ENV, ARTIFACT_MOUNT)  # extracted data shards land there too
    if step.resources.gpus:
        for key, value in options.gpu_node_selector:
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for key, effect in options.gpu_tolerations:
            kubernetes.add_toleration(task, key=key, operator="Exists", effect=effect)
    if step.resources.gpus and options.allow_cpu_torch_on_gpu:
        # The trainers' device check (facepipe.training.context) then lets device=auto use CPU.
        task.set_env_variable(CPU_TORCH_ALLOWED_ENV, "1")


def _cluster_settings(task: dsl.PipelineTask, step: Step, options: ClusterOptions) -> dsl.PipelineTask:
    task.set_cpu_request(step.resources.cpu).set_memory_request(step.resources.memory)
    if step.resources.gpus:
        task.set_accelerator_type(ACCELERATOR).set_accelerator_limit(step.resources.gpus)
    # Transient failures (preempted node, object store hiccup) get retried; training resumes from
    # the checkpoints it uploaded under the pipeline root instead of starting over. KFP's retry policy
    # cannot skip an exit code, so a ConfigError's retry is made to fail at once by the step itself
    # (facepipe.orchestration.attempts): its backoff wait (60 s, then 120 s) is all it costs.
    task.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="900s")
    _environment(task, options)
    task.set_display_name(step.name.replace("_", "-"))
    _pod_settings(task, step, options)
    return task


def _environment(task: dsl.PipelineTask, options: ClusterOptions) -> dsl.PipelineTask:
    """What every task (step or light) needs from its pod: the image pull secret, credentials from
    the secrets, and the KFP run id from the pod's label (not a task input, so caching still
    works): the tasks find the MLflow parent by it."""
    if options.pull_secret:
        kubernetes.set_image_pull_secrets(task, [options.pull_secret])
    for secret, keys in SECRETS.items():
        kubernetes.use_secret_as_env(task, secret_name=secret,
                                     secret_key_to_env={k: k for k in keys}, optional=True)
    kubernetes.use_field_path_as_env(task, env_name="FACEPIPE_KFP_RUN_ID",
                                     field_path="metadata.labels['pipeline/runid']")
    return task


def _light_settings(task: dsl.PipelineTask, name: str, options: ClusterOptions) -> dsl.PipelineTask:
    """A run-level task: small, never cached (it acts for this run), retried on transient failures."""
    task.set_cpu_request("0.5").set_memory_request("1G").set_caching_options(False)
    task.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="300s")
    task.set_display_name(name)
    return _environment(task, options)


def _step_values(values: dict, step: str) -> dict:
    return {p.name: values[p.name] for p in step_parameters(step)}


def _begin(values: dict, options: ClusterOptions) -> dsl.PipelineTask:
    return _light_settings(run_tasks.begin_component()(**values), "begin-run", options)


def _data_digest(values: dict, options: ClusterOptions) -> dsl.PipelineTask:
    task = run_tasks.data_digest_component()(data_uri=values["data_uri"])
    return _light_settings(task, "data-digest", options)


def _publish(values: dict, artifact, step: str, options: ClusterOptions) -> dsl.PipelineTask:
    task = run_tasks.publish_component()(artifact=artifact, step=step, output_uri=values["output_uri"])
    return _light_settings(task, f"publish-{step.replace('_', '-')}", options)


def _publish_all(values: dict, outputs: dict[str, object], options: ClusterOptions) -> None:
    """A publish task per step output, only when there is a target (else no artifact is downloaded);
    synth's images only when synthesized (given data is already where it came from)."""
    with dsl.If(values["output_uri"] != "", name="publish"):
        for step, artifact in outputs.items():
            if step in HOSTED:
                with dsl.If(values["data_uri"] == "", name=f"publish-{step}-when-synthesized"):
                    _publish(values, artifact, step, options)
            else:
                _publish(values, artifact, step, options)


def _record(lineages: dict, options: ClusterOptions) -> dsl.PipelineTask:
    task = run_tasks.record_component(tuple(lineages))(**{f"{t}_lineage": v for t, v in lineages.items()})
    return _light_settings(task, "record-run", options)


def _finish(options: ClusterOptions) -> dsl.PipelineTask:
    task = run_tasks.finish_component(tuple(TASKS))()
    return _light_settings(task, "finish-run", options)


def _body(values: dict, options: ClusterOptions) -> None:
    with dsl.ExitHandler(_finish(options), name="facepipe-run"):
        begin = _begin(values, options)
        digest = _data_digest(values, options)
        artifacts: dict = {}  # artifact name -> the task output that carries it
        outputs: dict = {}    # step -> its output artifact, to publish
        lineages: dict = {}   # task -> its lineage output
        for name in TASKS:
            step = STEPS[name]
            component = getattr(importlib.import_module(f"components.{name}.component"), name)
            hosted = [s for s, host in HOSTED.items() if host == name]
            if hosted:  # the pack task: its data source is the hosted step or data_uri, no input artifact
                inputs = {k: v for s in hosted + [name] for k, v in _step_values(values, s).items()}
                inputs.update(data_uri=values["data_uri"], data_digest=digest.output)
            else:
                inputs = _step_values(values, name) | {p.artifact: artifacts[p.artifact] for p in step.inputs}
            task = _cluster_settings(component(**inputs), step, options).after(begin)
            artifacts.update({STEPS[s].output: task.outputs[STEPS[s].output] for s in hosted + [name]})
            outputs.update({s: task.outputs[STEPS[s].output] for s in hosted + [name]})
            lineages[name] = task.outputs["lineage"]
        _publish_all(values, outputs, options)
        _record(lineages, options)


def build_pipeline(options: ClusterOptions | None = None):
    """The pipeline function, its signature generated from the step configs."""
    options = options or ClusterOptions.from_env()
    params = pipeline_parameters(PIPELINE_STEPS)
    names = [p.name for p in params]

    def facepipe(*args):
        _body(dict(zip(names, args)), options)

    facepipe.__signature__ = inspect.Signature(
        [inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default,
                           annotation=p.kind) for p in params])
    facepipe.__doc__ = __doc__.splitlines()[0] + " Parameters: " + "; ".join(
        f"{name}: {help}" for name, (_, help) in RUN_PARAMETERS.items()) + "; <step>__<key>: that step's config key."
    return dsl.pipeline(name=PIPELINE_NAME, description=facepipe.__doc__)(facepipe)
