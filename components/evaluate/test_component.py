"""The evaluate component: the step function on a temp folder, and the component through kfp.local."""

from __future__ import annotations

import json

from kfp.dsl import Dataset, Model

from components.conftest import run_component, tiny_config, tiny_values


def test_step_function_writes_stable_metrics_and_plots(tiny_data, tiny_models, tiny_gallery, tmp_path):
    from facepipe.evaluation.pipeline_eval import STABLE_KEYS, evaluate_pipeline

    detector, recognizer = tiny_models
    metrics = evaluate_pipeline(tiny_config("evaluate"), tiny_data, detector / "model.pt", recognizer / "model.pt",
                                tiny_gallery, tmp_path)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert set(STABLE_KEYS) <= set(written) and written["verification.auc"] == metrics["verification.auc"]
    synth = tiny_config("synth")
    # Every pair of faces_pairs.txt is scored; the given gallery is searched, not rebuilt.
    assert metrics["verification.pairs"] == 2 * synth.pair_folds * synth.pairs_per_fold
    assert metrics["identification.num_gallery"] == synth.identities
    assert not metrics["evaluate.skipped"]
    assert list(tmp_path.rglob("*.png"))


def test_component_through_kfp_local(kfp_local, tiny_data, tiny_models, tiny_gallery):
    from components.evaluate.component import evaluate

    detector, recognizer = tiny_models
    task = run_component(kfp_local, evaluate, {"images": (Dataset, tiny_data), "detector": (Model, detector),
                                               "recognizer": (Model, recognizer), "gallery": (Dataset, tiny_gallery)},
                         **tiny_values("evaluate"))
    metrics = json.loads((task / "metrics").read_text())
    written = json.loads((task / "evaluation" / "metrics.json").read_text())
    for key in ("verification.accuracy", "identification.rank1", "detection.ap50"):
        assert metrics[key] == written[key], key  # the KFP metrics are the step's own
    synth = tiny_config("synth")
    assert metrics["verification.pairs"] == 2 * synth.pair_folds * synth.pairs_per_fold
    report = (task / "report").read_text()
    assert report.count("data:image/png;base64,") >= 2  # the plots are inside the report
