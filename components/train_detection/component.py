"""KFP component `train_detection`: a RetinaFace detector trained on the data's detection/ scenes."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from facepipe.orchestration.images import image_reference
from facepipe.steps import STEPS


@dsl.component(base_image=image_reference(STEPS["train_detection"].image), install_kfp_package=False)
def train_detection(
    config: dict,
    images: Input[Dataset],
    output_uri: str,
    mlflow_parent_run_id: str,
    detector: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Train on `images`/detection (label.txt trees); `detector` gets model.pt, model.onnx, metrics, plots."""
    from facepipe.orchestration.component_runtime import run_step
    from facepipe.steps import STEPS

    inputs = STEPS["train_detection"].local_inputs({"images": images.path})
    run_step("train_detection", config, inputs, detector.path, metrics=metrics, report=report,
             parent_run_id=mlflow_parent_run_id, output_uri=output_uri)
