"""KFP component `pack`: the pipeline's data source (given data or synthesized) packed into RecordIO."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics, Output

from facepipe.orchestration.images import image_reference
from facepipe.steps import STEPS


@dsl.component(base_image=image_reference(STEPS["pack"].image), install_kfp_package=False)
def pack(
    synth_config: dict,
    pack_config: dict,
    data_uri: str,
    output_uri: str,
    mlflow_parent_run_id: str,
    images: Output[Dataset],
    records: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Localize `data_uri` (or synthesize data when it is empty) into `images`, pack its faces into `records`."""
    from facepipe.orchestration.component_runtime import localize_data, run_step
    from facepipe.steps import STEPS

    if data_uri:
        localize_data(data_uri, images.path)
    else:
        run_step("synth", synth_config, {}, images.path,
                 parent_run_id=mlflow_parent_run_id, output_uri=output_uri)
    run_step("pack", pack_config, STEPS["pack"].local_inputs({"images": images.path}), records.path, metrics=metrics,
             report=report, parent_run_id=mlflow_parent_run_id, output_uri=output_uri)
