"""The facepipe Kubeflow pipeline: data (given or synthetic) -> pack -> train detection -> train recognition -> gallery -> evaluate.

Its parameters are every step config key, named `<step>__<key>` (facepipe.orchestration.params),
plus the run-level `data_uri`, `output_uri` and `mlflow_parent_run_id`. Components stay thin
(components/<step>/component.py); what only matters on a cluster lives here: CPU/memory
requests, a GPU for training, retries with backoff, and credentials from Kubernetes secrets
(never in the spec: the secrets hold them, pipeline.yaml only names the secrets).
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

from kfp import dsl, kubernetes

from facepipe.orchestration.params import RUN_PARAMETERS, pipeline_parameters

PIPELINE_NAME = "facepipe"
# Steps that are pipeline parameters' sections, in pipeline order (synth is pack's data source).
# Grows as the steps land; the pipeline works at every stage.
STEPS = ["synth", "pack", "train_detection", "train_recognition", "build_gallery", "evaluate"]

# Kubernetes secrets the tasks read credentials from (created once per namespace; docs/pipeline.md).
SECRETS = {
    "facepipe-s3": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"],
    "facepipe-obs": ["OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY", "OBS_ENDPOINT"],
    "facepipe-mlflow": ["MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                        "MLFLOW_S3_ENDPOINT_URL"],
}
# Per step: CPU, memory, GPU count (training and embedding benefit from one).
RESOURCES = {
    "pack": ("4", "8G", 0),
    "train_detection": ("8", "32G", 1),
    "train_recognition": ("8", "32G", 1),
    "build_gallery": ("4", "16G", 1),
    "evaluate": ("4", "16G", 0),
}
ACCELERATOR = "nvidia.com/gpu"


def _cluster_settings(task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
    cpu, memory, gpus = RESOURCES[step]
    task.set_cpu_request(cpu).set_memory_request(memory)
    if gpus:
        task.set_accelerator_type(ACCELERATOR).set_accelerator_limit(gpus)
    # Transient failures (preempted node, object store hiccup) get retried; training resumes
    # from its checkpoint (FACEPIPE_SCRATCH_DIR on a volume) instead of starting over.
    task.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="900s")
    for secret, keys in SECRETS.items():
        kubernetes.use_secret_as_env(task, secret_name=secret,
                                     secret_key_to_env={k: k for k in keys}, optional=True)
    # The KFP run id from the pod's label (not a task input, so caching still works): the steps
    # find their MLflow parent run by it.
    kubernetes.use_field_path_as_env(task, env_name="FACEPIPE_KFP_RUN_ID",
                                     field_path="metadata.labels['pipeline/runid']")
    task.set_display_name(step.replace("_", "-"))
    return task


def _step_config(values: dict, step: str) -> dict:
    return {p.key: values[p.name] for p in pipeline_parameters([step]) if p.step == step}


# Pipeline outputs (what `facepipe run` points users at), by the step that makes them.
OUTPUTS = {
    "data": ("pack", "images", dsl.Dataset),
    "records": ("pack", "records", dsl.Dataset),
    "detector": ("train_detection", "detector", dsl.Model),
    "recognizer": ("train_recognition", "recognizer", dsl.Model),
    "gallery": ("build_gallery", "gallery", dsl.Dataset),
    "evaluation": ("evaluate", "evaluation", dsl.Artifact),
    "metrics": ("evaluate", "metrics", dsl.Metrics),
    "report": ("evaluate", "report", dsl.HTML),
}


def _outputs_type():
    fields = [(name, typ) for name, (step, _, typ) in OUTPUTS.items() if step in STEPS]
    return NamedTuple("Outputs", fields)


def _body(values: dict):
    from components.pack.component import pack

    run = {k: values[k] for k in ("output_uri", "mlflow_parent_run_id")}
    tasks = {}
    tasks["pack"] = _cluster_settings(pack(synth_config=_step_config(values, "synth"),
                                           pack_config=_step_config(values, "pack"),
                                           data_uri=values["data_uri"], **run), "pack")
    images = tasks["pack"].outputs["images"]
    if "train_detection" in STEPS:
        from components.train_detection.component import train_detection

        tasks["train_detection"] = _cluster_settings(train_detection(
            config=_step_config(values, "train_detection"), images=images, **run), "train_detection")
    if "train_recognition" in STEPS:
        from components.train_recognition.component import train_recognition

        tasks["train_recognition"] = _cluster_settings(train_recognition(
            config=_step_config(values, "train_recognition"), records=tasks["pack"].outputs["records"],
            **run), "train_recognition")
    if "build_gallery" in STEPS:
        from components.build_gallery.component import build_gallery

        models = {"detector": tasks["train_detection"].outputs["detector"],
                  "recognizer": tasks["train_recognition"].outputs["recognizer"]}
        tasks["build_gallery"] = _cluster_settings(build_gallery(
            config=_step_config(values, "build_gallery"), images=images, **models, **run), "build_gallery")
    if "evaluate" in STEPS:
        from components.evaluate.component import evaluate

        tasks["evaluate"] = _cluster_settings(evaluate(
            config=_step_config(values, "evaluate"), images=images, **models,
            gallery=tasks["build_gallery"].outputs["gallery"], **run), "evaluate")
    return _outputs_type()(**{name: tasks[step].outputs[output]
                              for name, (step, output, _) in OUTPUTS.items() if step in STEPS})


def build_pipeline():
    """The pipeline function, its signature generated from the step configs."""
    params = pipeline_parameters(STEPS)
    names = [p.name for p in params]

    def facepipe(*args):
        return _body(dict(zip(names, args)))

    facepipe.__signature__ = inspect.Signature(
        [inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default,
                           annotation=p.kind) for p in params],
        return_annotation=_outputs_type())
    facepipe.__doc__ = __doc__.splitlines()[0] + " Parameters: " + "; ".join(
        f"{name}: {help}" for name, (_, help) in RUN_PARAMETERS.items()) + "; <step>__<key>: that step's config key."
    return dsl.pipeline(name=PIPELINE_NAME, description=facepipe.__doc__)(facepipe)
