"""What one attempt of a step leaves for the next: the checkpoint URI under the pipeline root (or
FACEPIPE_CHECKPOINT_ROOT), and a configuration error that a KFP retry repeats at once, with exit status 3."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from facepipe.errors import ConfigError
from facepipe.orchestration import attempts
from facepipe.orchestration.component_runtime import run_component
from facepipe.orchestration.params import step_parameters


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (attempts.CHECKPOINT_ROOT_ENV, attempts.KFP_RUN_ENV, "MLFLOW_TRACKING_URI",
                 "FACEPIPE_TRACKING_SPOOL", "FACEPIPE_MLFLOW_PARENT_RUN_ID", "FACEPIPE_RUN_PID"):
        monkeypatch.delenv(name, raising=False)


def test_the_checkpoint_root_is_the_pipeline_root_the_output_artifact_lies_under(monkeypatch):
    artifact = "minio://mlpipeline/v2/artifacts/facepipe/5d1e-run/train-recognition/7f3a/recognizer"
    assert attempts.checkpoint_root(artifact) == ""  # outside KFP (no run id): no default
    monkeypatch.setenv(attempts.KFP_RUN_ENV, "5d1e-run")
    # minio:// is KFP's name for its S3 store
    assert attempts.checkpoint_root(artifact) == "s3://mlpipeline/v2/artifacts"
    assert attempts.checkpoint_root("obs://bucket/root/facepipe/5d1e-run/t/recognizer") == "obs://bucket/root"
    monkeypatch.setenv(attempts.CHECKPOINT_ROOT_ENV, "s3://elsewhere/ckpt/")
    assert attempts.checkpoint_root(artifact) == "s3://elsewhere/ckpt"


def test_the_checkpoint_uri_is_keyed_by_step_config_and_inputs_unless_given():
    config, inputs = {"lr": 0.1, "checkpoint_uri": ""}, {"data_dir": "/pipeline/records"}
    uri = attempts.checkpoint_uri("train_recognition", config, inputs, "s3://b/root")
    assert uri.startswith("s3://b/root/checkpoints/train_recognition/")
    assert uri == attempts.checkpoint_uri("train_recognition", dict(config), dict(inputs), "s3://b/root")
    assert uri != attempts.checkpoint_uri("train_recognition", {**config, "lr": 0.2}, inputs, "s3://b/root")
    assert uri != attempts.checkpoint_uri("train_recognition", config, {"data_dir": "/other"}, "s3://b/root")
    given = {**config, "checkpoint_uri": "obs://mine/run1/"}
    assert attempts.checkpoint_uri("train_recognition", given, inputs, "s3://b/root") == "obs://mine/run1"
    assert attempts.checkpoint_uri("train_recognition", config, inputs, "") == ""  # no root: local only
    assert attempts.checkpoint_uri("pack", {"size": 64}, {}, "s3://b/root") == ""  # no checkpoints


def _component_args(tmp_path, run_id: str, **values):
    """The arguments KFP gives the train_recognition component (artifacts as path + uri)."""
    args = {p.name: p.default for p in step_parameters("train_recognition")}
    args.update({f"train_recognition__{k}": v for k, v in values.items()})
    out_uri = str(tmp_path / "root" / "facepipe" / run_id / "train-recognition" / "recognizer")
    return {**args, "mlflow_parent_run_id": "", "output_uri": "",
            "records": SimpleNamespace(path=str(tmp_path / "no-records-needed"), uri=""),
            "recognizer": SimpleNamespace(path=str(tmp_path / "out"), uri=out_uri),
            "metrics": None, "report": None}


def test_a_config_error_exits_3_and_its_retry_fails_at_once_with_the_same_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(attempts.KFP_RUN_ENV, "run-7")
    with pytest.raises(SystemExit) as first:
        run_component("train_recognition", _component_args(tmp_path, "run-7", schedule="nonsense"))
    assert first.value.code == attempts.EXIT_CONFIG_ERROR == 3
    message = capsys.readouterr().err
    assert "configuration error" in message and "schedule" in message
    marker = tmp_path / "root" / "config-errors" / "run-7" / "train_recognition"
    assert marker.is_file()

    # the retry: same run, same arguments; it stops at the marker
    with pytest.raises(SystemExit) as retry:
        run_component("train_recognition", _component_args(tmp_path, "run-7", schedule="nonsense"))
    assert retry.value.code == 3
    assert "a retry of an attempt that failed on this configuration error" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.pt").exists()

    # a new run (another run id) is not blocked by the old marker: it decodes its config itself
    from facepipe.orchestration.component_runtime import run_step

    monkeypatch.setenv(attempts.KFP_RUN_ENV, "run-8")
    with pytest.raises(ConfigError) as new_run:
        run_step("train_recognition", {"schedule": "nonsense"}, {"data_dir": str(tmp_path / "none")},
                 str(tmp_path / "out8"), artifact_uri=str(tmp_path / "root" / "facepipe" / "run-8" / "t" / "r"))
    assert "schedule" in str(new_run.value) and "a retry" not in str(new_run.value)
