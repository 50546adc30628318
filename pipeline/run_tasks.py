"""The pipeline run's light tasks around the steps: data digest, MLflow parent begin/record/finish, publish.

Their logic is `facepipe.orchestration.pipeline_run`; here only their KFP components (generated
like the steps', `components.lightweight_component`) and their wiring helpers. None is cached:
each says something about this run (its MLflow parent, what it published, what the data is now).
"""

from __future__ import annotations

from functools import lru_cache

from components import Signature, lightweight_component
from facepipe.orchestration.params import RUN_PARAMETERS, pipeline_parameters
from facepipe.steps import DATA_IMAGE, PIPELINE_STEPS, TRAIN_IMAGE

# Full mlflow (a sqlite store, as the docker runner's default) is only in the train image.
TRACKING_IMAGE = TRAIN_IMAGE
MODULE = "pipeline.run_tasks"


@lru_cache(maxsize=None)
def data_digest_component():
    signature = Signature()
    signature.arg("data_uri", "str", RUN_PARAMETERS["data_uri"][1], "")
    body = ("from facepipe.orchestration.pipeline_run import data_digest\n\n"
            "return data_digest(data_uri)")
    return lightweight_component("data_digest", signature, "The given data's manifest digest, for pack's cache key "
                                 "(empty when the data is synthesized)", body, DATA_IMAGE, MODULE, outputs="str")


@lru_cache(maxsize=None)
def begin_component():
    """One input per pipeline parameter: the parent logs them all, whoever submitted the run."""
    signature = Signature()
    for p in pipeline_parameters(PIPELINE_STEPS):
        signature.arg(p.name, p.kind.__name__, p.help or RUN_PARAMETERS.get(p.name, ("", p.name))[1], p.default)
    body = ("parameters = dict(locals())  # the inputs, before anything else is a local\n"
            "from facepipe.orchestration.pipeline_run import begin\n\n"
            "begin(parameters, parameters['mlflow_experiment'], parameters['mlflow_parent_run_id'])")
    return lightweight_component("begin_run", signature, "Create the pipeline run's MLflow parent run and log "
                                 "every pipeline parameter", body, TRACKING_IMAGE, MODULE)


@lru_cache(maxsize=None)
def publish_component():
    signature = Signature()
    signature.arg("artifact", "Input[Artifact]", "the step output to publish")
    signature.arg("step", "str", "the step that made it: the folder name under output_uri")
    signature.arg("output_uri", "str", RUN_PARAMETERS["output_uri"][1], "")
    body = ("from facepipe.orchestration.pipeline_run import publish\n\n"
            "publish(artifact.path, output_uri, step)")
    return lightweight_component("publish", signature, "Copy one step output to <output_uri>/<step>/ "
                                 "(manifest last)", body, DATA_IMAGE, MODULE)


@lru_cache(maxsize=None)
def record_component(tasks: tuple[str, ...]):
    """One `<task>_lineage` input per step task (strings: nothing is downloaded)."""
    signature = Signature()
    for task in tasks:
        signature.arg(f"{task}_lineage", "str", f"the {task} task's lineage output")
    body = ("given = dict(locals())\n"
            "from facepipe.orchestration.pipeline_run import record\n\n"
            f"record({{t: given[t + '_lineage'] for t in {tasks!r}}}, {tasks[-1]!r})")
    return lightweight_component("record_run", signature, "Tag the MLflow parent with each step executed or reused "
                                 "(a reused one linked to the run that made its artifact)", body, TRACKING_IMAGE,
                                 MODULE)


@lru_cache(maxsize=None)
def finish_component(tasks: tuple[str, ...]):
    signature = Signature()
    signature.arg("status", "PipelineTaskFinalStatus", "the final state of the pipeline's steps (set by KFP)")
    body = ("from facepipe.orchestration.pipeline_run import finish\n\n"
            f"finish(status.state, status.error_message or '', {tasks!r})")
    return lightweight_component("finish_run", signature, "End the MLflow parent run with the pipeline's final "
                                 "status (the exit handler: runs after a failure too)", body, TRACKING_IMAGE, MODULE)

