"""KFP component `evaluate`: verification, identification and detection metrics of the trained pipeline."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from facepipe.orchestration.images import TRAIN_IMAGE, image_reference


@dsl.component(base_image=image_reference(TRAIN_IMAGE), install_kfp_package=False)
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

    inputs = {"data_dir": images.path, "detector_path": detector.path + "/model.pt",
              "recognizer_path": recognizer.path + "/model.pt", "gallery_dir": gallery.path}
    run_step("evaluate", config, inputs, evaluation.path, metrics=metrics, report=report,
             parent_run_id=mlflow_parent_run_id, output_uri=output_uri)
