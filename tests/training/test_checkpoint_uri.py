"""Checkpoints mirrored to a checkpoint URI: layout (manifest last), pruning, resume from it into an empty
output folder, incomplete steps skipped, upload failures surfaced; a local folder and the test S3 server alike."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from facepipe import storage
from facepipe.errors import StorageError
from facepipe.training.checkpoint import Checkpoints
from facepipe.training.loop import TrainState


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("FACEPIPE_STORAGE_ATTEMPTS", "2")
    monkeypatch.setenv("FACEPIPE_STORAGE_BACKOFF_S", "0.01")


def _ctx():
    return SimpleNamespace(rank=0, world=1, main=True, device=torch.device("cpu"), barrier=lambda: None,
                           broadcast=lambda v: v)


@pytest.fixture(params=["folder", "s3"])
def checkpoint_uri(request, tmp_path):
    if request.param == "folder":
        return str(tmp_path / "remote" / "ckpt")
    server = request.getfixturevalue("s3_env")
    server.create_bucket("ckpt")
    return f"s3://ckpt/{tmp_path.name}/train_recognition/abc123"


def _save(ckpts, layer, step):
    torch.nn.init.constant_(layer.weight, float(step))
    ckpts.save({"layer": layer}, TrainState(step=step, history=[{"step": step}]))


def test_checkpoints_go_to_the_uri_pruned_to_the_last_two_and_resume_from_there(tmp_path, checkpoint_uri):
    config = {"lr": 0.1, "checkpoint_uri": checkpoint_uri}
    ckpts, layer = Checkpoints(tmp_path / "first", _ctx(), config, ("checkpoint_uri",), uri=checkpoint_uri), \
        torch.nn.Linear(2, 1)
    for step in (3, 6, 9, 12):
        _save(ckpts, layer, step)
        ckpts.close()  # each upload finishes before the next save: none is superseded
    assert [e.name for e in storage.ls(checkpoint_uri)] == ["step-000000009/", "step-000000012/"]
    names = [e.name for e in storage.ls(f"{checkpoint_uri}/step-000000012/rank0")]
    assert names == ["COMPLETE", "manifest.json", "rank0.pt"]
    assert json.loads(storage.read_bytes(f"{checkpoint_uri}/step-000000012/rank0/COMPLETE")) == \
        {"step": 12, "world_size": 1}
    assert not (tmp_path / "first" / "checkpoints" / ".upload").exists(), "staging left behind"

    # another machine: an empty output folder, the same URI
    again, fresh = Checkpoints(tmp_path / "second", _ctx(), config, ("checkpoint_uri",), uri=checkpoint_uri), \
        torch.nn.Linear(2, 1)
    ckpt = again.resume({"layer": fresh})
    assert torch.equal(fresh.weight, torch.full((1, 2), 12.0)) and again.saved_step == 12
    assert TrainState.from_dict(ckpt["state"]).step == 12
    assert (tmp_path / "second" / "checkpoints" / "step-000000012" / "COMPLETE").exists()


def test_a_step_whose_upload_did_not_finish_is_not_resumed_from(tmp_path, checkpoint_uri):
    ckpts, layer = Checkpoints(tmp_path / "first", _ctx(), {}, (), uri=checkpoint_uri), torch.nn.Linear(2, 1)
    for step in (4, 8):
        _save(ckpts, layer, step)
        ckpts.close()
    # as if killed mid-upload: the shard is there, its manifest (written last) is not
    loc = storage.parse_uri(f"{checkpoint_uri}/step-000000008/rank0/manifest.json")
    storage.backend_for(loc).delete(loc)
    fresh = torch.nn.Linear(2, 1)
    Checkpoints(tmp_path / "second", _ctx(), {}, (), uri=checkpoint_uri).resume({"layer": fresh})
    assert torch.equal(fresh.weight, torch.full((1, 2), 4.0))


def test_a_newer_local_checkpoint_wins_over_the_uri(tmp_path):
    uri = str(tmp_path / "remote")
    ckpts, layer = Checkpoints(tmp_path / "out", _ctx(), {}, (), uri=uri), torch.nn.Linear(2, 1)
    _save(ckpts, layer, 5)
    ckpts.close()
    Checkpoints(tmp_path / "out", _ctx(), {}, ()).save({"layer": layer}, TrainState(step=7))  # killed before its upload
    fresh = torch.nn.Linear(2, 1)
    assert Checkpoints(tmp_path / "out", _ctx(), {}, (), uri=uri).resume({"layer": fresh})["state"]["step"] == 7


def test_a_failed_upload_is_raised_by_the_next_save_or_close(tmp_path, s3_env):
    uri = "s3://no-such-bucket/ckpt"
    ckpts, layer = Checkpoints(tmp_path, _ctx(), {}, (), uri=uri), torch.nn.Linear(2, 1)
    _save(ckpts, layer, 1)  # the local save succeeds; the upload fails in the background
    with pytest.raises(StorageError, match=r"uploading a checkpoint to s3://no-such-bucket/ckpt failed"):
        ckpts.close()
    assert (tmp_path / "checkpoints" / "step-000000001" / "COMPLETE").exists()


def test_a_session_saves_the_last_step_and_a_failing_run_raises_its_own_error_not_the_uploads(tmp_path, s3_env):
    layer, closed = torch.nn.Linear(2, 1), []
    progress = SimpleNamespace(close=lambda: closed.append(True))
    ckpts = Checkpoints(tmp_path / "ok", _ctx(), {}, ())
    with ckpts.session({"layer": layer}, TrainState(step=3), progress):
        pass  # the loop ended between checkpoints: the session saves the last step
    assert ckpts.saved_step == 3 and (tmp_path / "ok" / "checkpoints" / "step-000000003" / "COMPLETE").exists()

    failing = Checkpoints(tmp_path / "bad", _ctx(), {}, (), uri="s3://no-such-bucket/ckpt")
    with pytest.raises(RuntimeError, match="the run's own error"):
        with failing.session({"layer": layer}, TrainState(step=1), progress):
            _save(failing, layer, 1)  # its upload fails in the background
            raise RuntimeError("the run's own error")
    assert closed == [True, True]
