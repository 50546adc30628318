"""KFP component `train_recognition`: an ArcFace-family recognizer trained on the packed RecordIO set."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from facepipe.orchestration.images import image_reference
from facepipe.steps import STEPS


@dsl.component(base_image=image_reference(STEPS["train_recognition"].image), install_kfp_package=False)
def train_recognition(
    config: dict,
    records: Input[Dataset],
    output_uri: str,
    mlflow_parent_run_id: str,
    recognizer: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Train on `records` (PREFIX.rec/.idx); `recognizer` gets model.pt, model.onnx, metrics, plots."""
    from facepipe.orchestration.component_runtime import run_step
    from facepipe.steps import STEPS

    inputs = STEPS["train_recognition"].local_inputs({"records": records.path})
    run_step("train_recognition", config, inputs, recognizer.path, metrics=metrics, report=report,
             parent_run_id=mlflow_parent_run_id, output_uri=output_uri)
