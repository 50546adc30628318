"""KFP component `build_gallery`: enrol the data's identities with the trained detector and recognizer."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from facepipe.orchestration.images import image_reference
from facepipe.steps import STEPS


@dsl.component(base_image=image_reference(STEPS["build_gallery"].image), install_kfp_package=False)
def build_gallery(
    config: dict,
    images: Input[Dataset],
    detector: Input[Model],
    recognizer: Input[Model],
    output_uri: str,
    mlflow_parent_run_id: str,
    gallery: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Embed `images`/faces/<identity>/ into `gallery` (embeddings, names, index, manifest)."""
    from facepipe.orchestration.component_runtime import run_step
    from facepipe.steps import STEPS

    inputs = STEPS["build_gallery"].local_inputs({"images": images.path, "detector": detector.path,
                                                  "recognizer": recognizer.path})
    run_step("build_gallery", config, inputs, gallery.path, metrics=metrics, report=report,
             parent_run_id=mlflow_parent_run_id, output_uri=output_uri)
