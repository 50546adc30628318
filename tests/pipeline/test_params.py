"""Pipeline parameters: flat `<step>__<key>` names, types through KFP and back, job files, rerun plans."""

from __future__ import annotations

import pytest

from facepipe.errors import ConfigError
from facepipe.orchestration.local import PipelineSpec, rerun_plan
from facepipe.orchestration.params import Arguments, decode_config, step_parameters
from facepipe.steps import PIPELINE_STEPS as STEPS
from tests.conftest import PROJECT_ROOT


def test_values_survive_the_trip_through_kfp_parameters(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("train_detection:\n  min_sizes: [[8, 16], [32, 64], [96, 128]]\n"
                   "build_gallery:\n  center_crop: 0.5\n")
    values = Arguments(STEPS).resolve(job, ["train_recognition.epochs=3", "train_recognition__lr=0.05",
                                            "pipeline.data_uri=s3://b/d"])
    assert values["train_recognition__epochs"] == 3 and values["train_recognition__lr"] == 0.05
    assert values["train_detection__min_sizes"] == "[[8, 16], [32, 64], [96, 128]]"
    assert values["build_gallery__center_crop"] == "0.5" and values["data_uri"] == "s3://b/d"
    # What a component receives: KFP renders numbers as doubles, lists and optionals as strings.
    cfg = decode_config("train_detection", {"min_sizes": values["train_detection__min_sizes"], "epochs": "3.0"})
    assert cfg.min_sizes == [[8, 16], [32, 64], [96, 128]] and cfg.epochs == 3
    gallery = decode_config("build_gallery", {"center_crop": ""})
    assert gallery.center_crop is None


def test_every_parameter_has_its_config_default():
    from facepipe.recognition.config import RecognitionTrainConfig

    params = {p.key: p for p in step_parameters("train_recognition")}
    assert params["epochs"].name == "train_recognition__epochs"
    assert params["epochs"].default == RecognitionTrainConfig().epochs and params["epochs"].kind is int
    assert params["m2"].kind is str and params["m2"].default == ""


@pytest.mark.parametrize("sets, message", [
    (["train_recognition.epoch=2"], "unknown key 'epoch' for step 'train_recognition'; valid keys: ["),
    (["train_recogniton.epochs=2"], "unknown step 'train_recogniton'; valid steps: ['pipeline', 'synth'"),
    (["recognize.top_k=3"], "a standalone step, not part of the pipeline"),
    (["train_recognition.epochs=many"], "epochs: expected int"),
    (["train_recognition.backbone=vgg"], "choose one of"),
    (["epochs"], "expected key=value"),
])
def test_bad_names_and_values_say_what_is_valid(sets, message):
    with pytest.raises(ConfigError) as err:
        Arguments(STEPS).resolve(None, sets)
    assert message in str(err.value)


def test_job_file_sections_are_checked(tmp_path):
    job = tmp_path / "bad.yaml"
    job.write_text("train_recognition:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'epochz'.*valid keys"):
        Arguments(STEPS).resolve(job)


def test_rerun_plans_follow_the_task_graph():
    spec = PipelineSpec(PROJECT_ROOT / "pipeline.yaml")
    assert rerun_plan(spec, "evaluate")[:2] == ("evaluate", [])
    task, downstream, sections = rerun_plan(spec, "train_recognition")
    assert task == "train-recognition" and downstream == ["build-gallery", "evaluate"]
    assert "train_detection" not in sections
    assert rerun_plan(spec, "synth")[0] == "pack"
    with pytest.raises(ConfigError, match="steps you can rerun"):
        rerun_plan(spec, "recognize")
