"""KFP component `recognize` (standalone): who is in these images, against a gallery."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Metrics, Output

from facepipe.orchestration.images import TRAIN_IMAGE, image_reference


@dsl.component(base_image=image_reference(TRAIN_IMAGE), install_kfp_package=False)
def recognize(
    config: dict,
    images_uri: str,
    gallery_uri: str,
    detector_uri: str,
    recognizer_uri: str,
    output_uri: str,
    mlflow_parent_run_id: str,
    results: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Every face in `images_uri` matched against `gallery_uri`; URIs are paths, file://, s3:// or obs://.

    `detector_uri`/`recognizer_uri` name model folders (with model.pt) or their model.pt; an empty
    `detector_uri` means none. `results` gets results.json, results.csv and annotated images.
    """
    from facepipe.orchestration.component_runtime import run_step

    inputs = {"data_dir": images_uri, "gallery_dir": gallery_uri, "detector_path": detector_uri,
              "recognizer_path": recognizer_uri}
    run_step("recognize", config, inputs, results.path, metrics=metrics, report=report,
             parent_run_id=mlflow_parent_run_id, output_uri=output_uri)
