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

    `detector_uri`/`recognizer_uri` name model folders (with model.pt); `results` gets results.json,
    results.csv and annotated images.
    """
    import contextlib

    from facepipe import storage
    from facepipe.orchestration.component_runtime import run_step

    with contextlib.ExitStack() as stack:
        local = {name: stack.enter_context(storage.localize(uri)) if uri else None
                 for name, uri in [("data_dir", images_uri), ("gallery_dir", gallery_uri),
                                   ("detector", detector_uri), ("recognizer", recognizer_uri)]}
        inputs = {"data_dir": str(local["data_dir"]), "gallery_dir": str(local["gallery_dir"]),
                  "detector_path": f"{local['detector']}/model.pt" if local["detector"] else None,
                  "recognizer_path": f"{local['recognizer']}/model.pt"}
        run_step("recognize", config, inputs, results.path, metrics=metrics, report=report,
                 parent_run_id=mlflow_parent_run_id, output_uri=output_uri)
