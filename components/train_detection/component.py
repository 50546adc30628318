"""KFP component `train_detection`: a RetinaFace detector trained on the data's detection/ scenes."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from facepipe.orchestration.images import TRAIN_IMAGE, image_reference


@dsl.component(base_image=image_reference(TRAIN_IMAGE), install_kfp_package=False)
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

    run_step("train_detection", config, {"data_dir": images.path + "/detection"}, detector.path,
             metrics=metrics, report=report, parent_run_id=mlflow_parent_run_id, output_uri=output_uri)
