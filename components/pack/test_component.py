"""The pack component: the step function on a temp folder, and the component through kfp.local."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.conftest import step_values
from facepipe.errors import ConfigError

TINY_SYNTH = dict(identities=4, images=3, scenes=2, eval_identities=2, pair_folds=1, pairs_per_fold=2,
                  face_size=64, scene_size=128)
TINY_FACES = TINY_SYNTH["identities"] * TINY_SYNTH["images"]


def packed_faces(rec_dir: Path) -> list[tuple[int, tuple]]:
    """(label, image shape) of every face record, found through the header record as InsightFace reads it."""
    from facepipe.data.recordio import IndexedRecordReader, decode_image, unpack_record

    reader = IndexedRecordReader(rec_dir / "train.rec")
    header, _ = unpack_record(reader.read(0))
    faces = [unpack_record(reader.read(key)) for key in range(1, int(header.label[0]))]
    return [(int(h.label), decode_image(payload).shape) for h, payload in faces]


def given_faces(data: Path) -> int:
    return sum(1 for p in (data / "faces").rglob("*") if p.is_file())


def test_step_functions_on_a_temp_folder(tmp_path):
    from facepipe.data.pack import PackConfig, pack
    from facepipe.data.synth import SynthConfig, synthesize

    synthesize(SynthConfig(**TINY_SYNTH), tmp_path / "data")
    report = pack(PackConfig(size=64, workers=1), tmp_path / "data" / "faces", tmp_path / "rec")
    faces = packed_faces(tmp_path / "rec")
    assert report["images_packed"] == len(faces) == TINY_FACES
    assert sorted({label for label, _ in faces}) == list(range(TINY_SYNTH["identities"]))
    assert {shape for _, shape in faces} == {(64, 64, 3)}
    assert (tmp_path / "rec" / "manifest.json").exists()


def test_component_synthesizes_and_packs_through_kfp_local(kfp_local):
    from components.pack.component import pack

    task = pack(**step_values("synth", **TINY_SYNTH), **step_values("pack", size=64),
                data_uri="", data_digest="")
    images, records = Path(task.outputs["images"].path), Path(task.outputs["records"].path)
    # The tree leaves the task as one shard per folder (facepipe.data.shards), not file by file.
    assert sorted(p.name for p in images.glob("*.tar")) == ["detection.tar", "faces.tar", "faces_eval.tar"]
    assert not [p for p in images.iterdir() if p.is_dir()]
    from facepipe.data.shards import unsharded

    with unsharded(images) as tree:
        assert len(list((Path(tree) / "faces").iterdir())) == TINY_SYNTH["identities"]
        assert (Path(tree) / "detection" / "train" / "label.txt").exists()
    assert len(packed_faces(records)) == TINY_FACES
    metrics = json.loads(Path(task.outputs["metrics"].path).read_text())
    assert metrics["images_packed"] == task.outputs["metrics"].metadata["images_packed"] == TINY_FACES
    assert "<h1>facepipe step: pack</h1>" in Path(task.outputs["report"].path).read_text()


def test_component_packs_given_data(kfp_local, synth_small):
    from components.pack.component import pack

    task = pack(**step_values("synth"), **step_values("pack", size=64),
                data_uri=str(synth_small), data_digest="")
    assert json.loads(Path(task.outputs["metrics"].path).read_text())["images_packed"] == given_faces(synth_small)
    assert len(packed_faces(Path(task.outputs["records"].path))) == given_faces(synth_small)


def test_bad_config_value_names_the_key():
    from facepipe.orchestration.params import decode_config

    with pytest.raises(ConfigError, match="size"):
        decode_config("pack", {"size": "big"})


def test_component_reads_obs_and_its_output_is_published_to_s3(kfp_local, synth_small, obs_env, s3_env):
    """Given data from obs:// (Huawei OBS SDK, v4); the pipeline's publish task copies the output to
    s3:// (boto3, SigV4-checked): the target is no input of pack, so no part of its cache key."""
    from kfp import dsl

    from components.pack.component import pack
    from facepipe import storage
    from pipeline.run_tasks import publish_component

    obs_env.create_bucket("pack-in")
    s3_env.create_bucket("pack-out")
    storage.upload(synth_small, "obs://pack-in/small")
    assert "output_uri" not in pack.component_spec.inputs

    def pack_and_publish():
        task = pack(**step_values("synth"), **step_values("pack", size=64), data_uri="obs://pack-in/small",
                    data_digest="sha256:given")
        publish_component()(artifact=task.outputs["records"], step="pack", output_uri="s3://pack-out/run")

    dsl.pipeline(name="pack-publish")(pack_and_publish)()
    (records,) = Path(kfp_local).glob("pack-publish-*/pack/records")
    assert json.loads((records.parent / "metrics").read_text())["images_packed"] == given_faces(synth_small)
    assert storage.is_complete("s3://pack-out/run/pack")
    local = Path(kfp_local) / "published"
    storage.download("s3://pack-out/run/pack", local)
    assert (local / "train.rec").read_bytes() == (records / "train.rec").read_bytes()
