"""What the MLflow UI reads beyond params and metrics, against a real `mlflow server`: the experiment
kind (which page an experiment opens on), the Source and Version columns (source and commit tags),
and the Dataset column (each step's data inputs, with their manifest digest and source URI)."""

from __future__ import annotations

import json

import pytest

from facepipe import tracking
from facepipe.manifest import content_digest


@pytest.fixture
def client(mlflow_env, monkeypatch):
    from mlflow.tracking import MlflowClient

    for name in ("FACEPIPE_TRACKING_SPOOL", "FACEPIPE_MLFLOW_PARENT_RUN_ID", "FACEPIPE_SCRATCH_DIR",
                 "FACEPIPE_KFP_RUN_ID", tracking.COMMIT_ENV):
        monkeypatch.delenv(name, raising=False)
    return MlflowClient(mlflow_env.uri)


def test_facepipe_experiments_open_on_the_training_runs(client, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ui-kind-new")
    run = tracking.start_step_run(None, "pack", {"size": 64})
    exp = client.get_experiment(client.get_run(run).info.experiment_id)
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"

    # An experiment made elsewhere gets the kind the first time facepipe logs to it; a chosen one stays.
    bare = client.create_experiment("ui-kind-old")
    chosen = client.create_experiment("ui-kind-chosen", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("ui-kind-old", "ui-kind-chosen"):
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
        tracking.start_step_run(None, "pack", {"size": 64})
    assert client.get_experiment(bare).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert client.get_experiment(chosen).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"


def test_runs_carry_source_and_commit(client, monkeypatch, tmp_path):
    commit = tracking.git_commit()
    assert commit, "the tests run from a git checkout"
    parent = tracking.start_pipeline_run("ui-source", {"facepipe.local_run_id": "r-src"})
    step = tracking.start_step_run(parent, "evaluate", {"batch_size": 8})
    for run_id, entry in ((parent, "facepipe run"), (step, "facepipe evaluate")):
        tags = client.get_run(run_id).data.tags
        assert tags["mlflow.source.name"] == entry
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.git.commit"] == commit.removesuffix("-dirty")

    # In an image there is no checkout: the commit comes from the environment; a KFP pod is a JOB.
    monkeypatch.setenv("FACEPIPE_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv(tracking.COMMIT_ENV, "0123abcd" * 5)
    monkeypatch.setenv("FACEPIPE_KFP_RUN_ID", "kfp-ui-source")
    tags = client.get_run(tracking.start_step_run(parent, "pack", {})).data.tags
    assert tags["mlflow.source.git.commit"] == "0123abcd" * 5 and tags["mlflow.source.type"] == "JOB"
    monkeypatch.delenv(tracking.COMMIT_ENV)
    tags = client.get_run(tracking.start_step_run(parent, "pack", {})).data.tags
    assert "mlflow.source.git.commit" not in tags, "no commit is made up"


def dataset_inputs(client, run_id):
    return [(d.dataset, {t.key: t.value for t in d.tags}) for d in client.get_run(run_id).inputs.dataset_inputs]


def test_a_step_logs_its_data_input_with_the_manifest_digest(client, s3_env, synth_small, tmp_path):
    """pack reads identity folders (a facepipe output with its manifest) from S3: the dataset is
    named by the port's artifact, sourced at the URI given, with the digest of that manifest."""
    import shutil

    from facepipe import storage
    from facepipe.manifest import write_manifest
    from facepipe.orchestration.component_runtime import run_step

    faces = tmp_path / "faces"
    shutil.copytree(synth_small / "faces", faces)
    write_manifest(faces, "faces")
    s3_env.create_bucket("ui-data")
    storage.upload(faces, "s3://ui-data/faces")
    run_step("pack", {"size": 64, "workers": 1}, {"src": "s3://ui-data/faces"}, str(tmp_path / "records"))
    (run,) = tracking.find_runs(step="pack", tags={"facepipe.input.src": "s3://ui-data/faces"})
    ((dataset, tags),) = dataset_inputs(client, run.info.run_id)
    digest = content_digest(faces)
    assert dataset.name == "images/faces"
    assert dataset.digest == digest[:36]
    assert dataset.source_type == "s3" and json.loads(dataset.source) == {"uri": "s3://ui-data/faces"}
    assert json.loads(dataset.profile) == {"digest": f"sha256:{digest}", "manifest": "yes"}
    assert tags["mlflow.data.context"] == "src"


def test_spooled_inputs_reach_the_run_and_models_are_not_datasets(client, synth_small, tmp_path, monkeypatch):
    """`facepipe run`'s steps spool their tracking; the replay logs the same datasets. A pipeline
    artifact's subfolder (images/faces) gets the digest of the artifact's manifest above it. A model
    port (model.pt) is linked through the registry, not logged as a dataset."""
    from facepipe import edge
    from facepipe.orchestration.component_runtime import SpoolLogger, replay_spool
    from facepipe.steps import STEPS

    spool = tmp_path / "spool"
    logger = SpoolLogger(spool, "build_gallery", "", ("", ""), {"facepipe.step": "build_gallery"})
    model = tmp_path / "recognizer" / "model.pt"
    model.parent.mkdir()
    model.write_bytes(b"weights")
    local = {"data_dir": str(synth_small / "faces"), "detector_path": None, "recognizer_path": str(model)}
    edge.log_inputs(STEPS["build_gallery"], local, local, logger)
    logger.event("end", status="FINISHED")
    (run_id,) = replay_spool(spool)
    ((dataset, tags),) = dataset_inputs(client, run_id)
    assert dataset.name == "images/faces" and tags["mlflow.data.context"] == "data_dir"
    assert dataset.source_type == "local" and json.loads(dataset.source)["uri"] == str(synth_small / "faces")
    assert dataset.digest == content_digest(synth_small)[:36]


def test_ui_links_open_the_model_training_view():
    assert (tracking.ui_url("http://h:5000/", "experiments/3")
            == "http://h:5000/#/experiments/3?workflowType=machine_learning")
    assert (tracking.run_url("http://h:5000", "3", "r1", "artifacts/plots/roc.png")
            == "http://h:5000/#/experiments/3/runs/r1/artifacts/plots/roc.png?workflowType=machine_learning")
    assert (tracking.compare_url("http://h:5000", ["a", "b"], ["3"])
            == "http://h:5000/#/compare-runs?runs=%5B%22a%22%2C%22b%22%5D&experiments=%5B%223%22%5D"
               "&workflowType=machine_learning")


def test_a_cli_step_command_run_names_its_command_and_input(client, synth_small, tmp_path):
    """`facepipe pack SRC OUT` with tracking on: the run (named after OUT) says `facepipe pack` ran on SRC."""
    from facepipe import edge
    from facepipe.config import load_config
    from facepipe.data.pack import PackConfig

    out = tmp_path / "my-records"
    edge.run_command("pack", load_config(PackConfig, None, ["size=64", "workers=1"]), {"src": str(synth_small / "faces")},
                     str(out), run_name=out.name)
    (run,) = tracking.find_runs(tags={"facepipe.output": str(out)})
    assert run.info.run_name == "my-records"
    assert run.data.tags["mlflow.source.name"] == "facepipe pack"
    ((dataset, tags),) = dataset_inputs(client, run.info.run_id)
    assert dataset.name == "images/faces" and json.loads(dataset.source)["uri"] == str(synth_small / "faces")
    assert dataset.digest == content_digest(synth_small)[:36] and tags["mlflow.data.context"] == "src"
