"""The seed commands at the edge: build-gallery, recognize, detect and evaluate with every input and output
an s3:// URI (the test S3 server) give what they give on local paths; a step's MLflow run has the
config's own keys as params, once, from the CLI and from the component runtime alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from facepipe import storage
from facepipe.cli import main
from facepipe.gallery.store import Gallery

S3 = "s3://edges"


def _people(src: Path, out: Path, count: int) -> Path:
    for name in sorted(p.name for p in src.iterdir())[:count]:
        shutil.copytree(src / name, out / name, symlinks=True)
    return out


def _fetch(uri: str, dest: Path) -> Path:
    return storage.download(uri, dest, quiet=True)


@pytest.fixture
def remote(s3_env, gallery_data, synth_small, untrained_detector, untrained_recognizer, tmp_path):
    """Local folders and their copies under s3://edges/."""
    s3_env.create_bucket("edges")
    local = {"faces": _people(gallery_data["gallery"], tmp_path / "faces", 4),
             "probes": _people(gallery_data["probes"], tmp_path / "probes", 4),
             "detector": untrained_detector.parent, "recognizer": untrained_recognizer.parent,
             "scenes": synth_small / "detection" / "test",
             "eval_images": gallery_data["synth"] / "faces_eval",
             "pairs": gallery_data["synth"] / "faces_pairs.txt"}
    for name in ("faces", "probes", "detector", "recognizer", "scenes"):
        storage.upload(local[name], f"{S3}/{name}", quiet=True)
    # The verification default: an `images` folder beside the pairs file.
    storage.upload(local["eval_images"], f"{S3}/eval/images", quiet=True)
    storage.upload(local["pairs"], f"{S3}/eval/pairs.txt", quiet=True)
    return local


# An untrained detector finds faces at random: keep images without one as flagged center crops.
GALLERY_SETS = ["--set", "no_face=center_crop", "--set", "score_threshold=0.9"]


def test_build_gallery_and_recognize_read_and_write_s3(remote, tmp_path):
    assert main(["build-gallery", f"{S3}/faces", f"{S3}/detector/model.pt", f"{S3}/recognizer/model.pt",
                 f"{S3}/gallery", *GALLERY_SETS]) == 0
    # Model folders stand for their model.pt, locally as on S3.
    assert main(["build-gallery", str(remote["faces"]), str(remote["detector"]), str(remote["recognizer"]),
                 str(tmp_path / "gallery"), *GALLERY_SETS]) == 0
    assert storage.is_complete(f"{S3}/gallery")
    on_s3, here = Gallery.load(_fetch(f"{S3}/gallery", tmp_path / "from-s3")), Gallery.load(tmp_path / "gallery")
    assert on_s3.identities == here.identities and len(here.identities) == 4
    assert np.allclose(on_s3.image_embeddings, here.image_embeddings)

    assert main(["recognize", f"{S3}/probes", f"{S3}/gallery", f"{S3}/detector", f"{S3}/recognizer",
                 "--out", f"{S3}/results", "--no-annotate"]) == 0
    assert main(["recognize", str(remote["probes"]), str(tmp_path / "gallery"), str(remote["detector"]),
                 str(remote["recognizer"] / "model.pt"), "--out", str(tmp_path / "results"), "--no-annotate"]) == 0
    answers = [json.loads((folder / "results.json").read_text())["images"]
               for folder in (_fetch(f"{S3}/results", tmp_path / "results-s3"), tmp_path / "results")]
    assert len(answers[0]) == 8  # 4 people x 2 probe images
    assert [(r["file"], [f["identity"] for f in r["faces"]]) for r in answers[0]] == \
           [(r["file"], [f["identity"] for f in r["faces"]]) for r in answers[1]]


def test_detect_reads_and_writes_s3(remote, tmp_path):
    args = ["--score-threshold", "0.3", "--no-annotate"]
    storage.upload(remote["scenes"] / "images", f"{S3}/scene-images", quiet=True)
    assert main(["detect", "--model", f"{S3}/detector", f"{S3}/scene-images", "--out", f"{S3}/detections",
                 *args]) == 0
    assert main(["detect", "--model", str(remote["detector"] / "model.pt"), str(remote["scenes"] / "images"),
                 "--out", str(tmp_path / "detections"), *args]) == 0
    found = json.loads((_fetch(f"{S3}/detections", tmp_path / "s3") / "detections.json").read_text())
    assert set(found) == {p.name for p in (remote["scenes"] / "images").iterdir()}
    assert found == json.loads((tmp_path / "detections" / "detections.json").read_text())


@pytest.mark.parametrize("kind", ["verification", "identification", "detection"])
def test_evaluate_reads_and_writes_s3(remote, tmp_path, kind):
    def args(where, on_s3: bool) -> list[str]:
        if kind == "verification":  # on S3, --images defaults to `images` beside the pairs file
            return ["--model", where("recognizer"), "--pairs", where("pairs"),
                    *([] if on_s3 else ["--images", where("eval_images")])]
        if kind == "identification":
            return ["--model", where("recognizer"), "--gallery-dir", where("faces"), "--probe-dir", where("probes")]
        return ["--model", where("detector"), "--data", where("scenes"), "--max-images", "2"]

    s3 = {"pairs": f"{S3}/eval/pairs.txt", "recognizer": f"{S3}/recognizer/model.pt"}
    assert main(["evaluate", kind, *args(lambda name: s3.get(name, f"{S3}/{name}"), True),
                 "--out", f"{S3}/ev"]) == 0
    assert main(["evaluate", kind, *args(lambda name: str(remote[name]), False), "--out", str(tmp_path / "ev")]) == 0
    from_s3 = json.loads((_fetch(f"{S3}/ev", tmp_path / "s3") / "metrics.json").read_text())
    here = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert from_s3 == here and any(k.startswith(f"{kind}.") for k in here)


def test_step_run_params_are_the_config_keys_once(gallery_data, untrained_recognizer, tmp_path, monkeypatch):
    """CLI, run_step logging directly and run_step spooled for the local runner: the same params."""
    from mlflow.tracking import MlflowClient

    from facepipe.config import load_config, to_dict
    from facepipe.gallery.build import GalleryConfig
    from facepipe.orchestration import component_runtime as runtime
    from facepipe.orchestration import pipeline_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "edges")
    for name in (runtime.SPOOL_ENV, runtime.PARENT_ENV, "FACEPIPE_CHECKPOINT_ROOT", pipeline_run.KFP_RUN_ENV,
                 pipeline_run.LOCAL_RUN_ENV):
        monkeypatch.delenv(name, raising=False)
    people = str(_people(gallery_data["gallery"], tmp_path / "people", 3))
    assert main(["build-gallery", people, "none", str(untrained_recognizer), str(tmp_path / "cli"),
                 "--template", "all"]) == 0
    inputs = {"data_dir": people, "detector_path": "none", "recognizer_path": str(untrained_recognizer.parent)}
    runtime.run_step("build_gallery", {"template": "all"}, inputs, str(tmp_path / "direct"))
    monkeypatch.setenv(runtime.SPOOL_ENV, str(tmp_path / "spool"))
    runtime.run_step("build_gallery", {"template": "all"}, inputs, str(tmp_path / "spooled"))
    runtime.replay_spool(tmp_path / "spool")

    cfg = to_dict(load_config(GalleryConfig, None, {"template": "all"}))
    expected = {k: "" if v is None else str(v) for k, v in cfg.items()}
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("edges").experiment_id])
    assert len(runs) == 3
    # run_step (direct and spooled) logs the gallery with its models as the facepipe-recognize model
    assert {v.version for v in client.search_model_versions("name = 'facepipe-recognize'")} == {1, 2}
    for run in runs:
        assert run.data.params == expected  # no `gallery.` copies, nothing left out
        assert run.data.tags["facepipe.step"] == "build_gallery"
        assert run.data.tags["facepipe.input.data_dir"] == people
