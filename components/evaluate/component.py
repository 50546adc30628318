"""KFP component `evaluate`: verification, identification and detection metrics of the trained pipeline."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from facepipe.orchestration.images import image_reference
from facepipe.steps import STEPS


@dsl.component(base_image=image_reference(STEPS["evaluate"].image), install_kfp_package=False)
def evaluate(
    config: dict,
    images: Input[Dataset],
    detector: Input[Model],
    recognizer: Input[Model],
    gallery: Input[Dataset],
    output_uri: str,
    mlflow_parent_run_id: str,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Score the models on `images`; `evaluation` gets metrics.json, the PNG plots and report.md."""
    from facepipe.orchestration.component_runtime import run_step
    from facepipe.steps import STEPS

    inputs = STEPS["evaluate"].local_inputs({"images": images.path, "detector": detector.path,
                                             "recognizer": recognizer.path, "gallery": gallery.path})
    run_step("evaluate", config, inputs, evaluation.path, metrics=metrics, report=report,
             parent_run_id=mlflow_parent_run_id, output_uri=output_uri)
