"""Training end to end on tiny models: outputs, Recognizer, ONNX, exact resume after a kill,
DDP with two CPU processes, and the errors a user gets for bad data or settings."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from facepipe import storage
from facepipe.errors import ConfigError, DataError, FacepipeError
from facepipe.recognition.train import train_recognition
from facepipe.training.checkpoint import latest_checkpoint
from facepipe.run_logger import MemoryLogger
from tests.recognition.conftest import TINY
from tests.training.resume import assert_same_weights, rewind_one_checkpoint

FACEPIPE = [sys.executable, "-m", "facepipe.cli"]


def _sets(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        out += ["--set", f"{k}={v}"]
    return out


def _env(threads: int = 1):
    root = Path(__file__).resolve().parents[2]  # this checkout's code, not an installed copy's
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}"}


@pytest.fixture(scope="module")
def trained(face_rec, tmp_path_factory):
    """One small run through the CLI: 2 epochs, verification on the pairs file, ONNX export."""
    out = tmp_path_factory.mktemp("trained")
    values = {**TINY, "epochs": 2, "export_onnx": True, "val_targets": "faces_pairs.txt", "amp": True}
    tracking = f"sqlite:///{out.parent / 'mlflow.db'}"
    proc = subprocess.run(FACEPIPE + ["train-recognition", str(face_rec), str(out), "--run-name", "tiny"]
                          + _sets(values), capture_output=True, text=True,
                          env={**_env(), "MLFLOW_TRACKING_URI": tracking}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(out=out, metrics=json.loads(proc.stdout.strip().splitlines()[-1]), tracking=tracking)


def test_training_is_logged_to_mlflow_when_a_tracking_uri_is_set(trained):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(trained.tracking)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                "attributes.run_name = 'tiny'")
    # the config once, under its own keys, values as given (device stays "auto"); derived numbers
    # such as num_classes go to metrics.json, not params
    from facepipe.config import keys
    from facepipe.recognition.config import RecognitionTrainConfig

    assert sorted(run.data.params) == sorted(keys(RecognitionTrainConfig))
    assert run.data.params["device"] == "auto" and run.data.metrics["num_classes"] > 0
    losses = client.get_metric_history(run.info.run_id, "train.loss")
    assert [m.step for m in losses] == list(range(1, 21))
    for key in ("train.lr", "train.samples_per_s", "faces_pairs.accuracy", "faces_pairs.auc"):
        assert key in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "model.onnx", "metrics.json", "plots"} <= artifacts


def test_training_writes_model_metrics_plots_and_manifest_last(trained):
    out, printed = trained.out, trained.metrics
    for name in ("model.pt", "model.onnx", "metrics.json", "training.png",
                 "verification_faces_pairs/roc.png", "verification_faces_pairs/det.png"):
        assert (out / name).stat().st_size > 0, name
    manifest = json.loads((out / "manifest.json").read_text())
    assert "model.pt" in manifest["files"] and manifest["kind"] == "recognizer"
    assert max(p.stat().st_mtime for p in out.rglob("*") if p.is_file()) <= (out / "manifest.json").stat().st_mtime
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == printed
    assert metrics["steps"] == metrics["total_steps"] == 2 * metrics["steps_per_epoch"] == 2 * (160 // 16)
    assert metrics["epochs"] == 2 and metrics["num_classes"] == 16 and metrics["num_images"] == 160
    for key in ("accuracy", "accuracy_std", "auc", "tar_at_far_1e-2", "tar_at_far_1e-3"):
        assert 0.0 <= metrics[f"faces_pairs.{key}"] <= 1.0
    blob = torch.load(out / "model.pt", weights_only=True)
    assert blob["kind"] == "recognizer" and blob["num_classes"] == 16
    assert blob["embedding_size"] == 32 and blob["input_size"] == 56 and blob["config"]["backbone"] == "iresnet18"


def test_recognizer_embeds_normalised_flip_summed_and_matches_onnx(trained):
    import onnxruntime as ort

    from facepipe.recognition.backbones import faces_to_tensor
    from facepipe.recognition.embed import Recognizer

    out = trained.out
    rec = Recognizer.load(out / "model.pt")
    assert (rec.input_size, rec.embedding_size) == (56, 32) and len(rec.digest) == 64
    faces = np.random.default_rng(0).integers(0, 256, (5, 56, 56, 3), dtype=np.uint8)
    emb = rec.embed(faces)
    assert emb.shape == (5, 32) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # flip sum: a mirrored face gets the same embedding
    assert np.allclose(rec.embed(faces[:, :, ::-1]), emb, atol=1e-4)
    assert not np.allclose(rec.embed(faces, flip=False), emb, atol=1e-3)
    with pytest.raises(ValueError, match=r"uint8 \(N, 56, 56, 3\)"):
        rec.embed(np.zeros((2, 112, 112, 3), np.uint8))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = faces_to_tensor(faces).numpy()
    onnx_out = session.run(None, {"faces": x})[0]
    with torch.no_grad():
        torch_out = rec.backbone(torch.from_numpy(x)).numpy()
    assert np.allclose(onnx_out, torch_out, atol=1e-4 * max(1.0, np.abs(torch_out).max()))


def test_evaluate_verification_command_writes_metrics_scores_and_plots(trained, face_rec, tmp_path):
    out, metrics = trained.out, trained.metrics
    ev = tmp_path / "ev"
    proc = subprocess.run(FACEPIPE + ["evaluate", "verification", "--model", str(out / "model.pt"),
                                      "--pairs", str(face_rec / "faces_pairs.txt"),
                                      "--images", str(face_rec / "images"), "--out", str(ev)],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads((ev / "metrics.json").read_text())
    for key in ("accuracy", "accuracy_std", "auc", "tar_at_far_1e-2", "tar_at_far_1e-3"):
        assert f"verification.{key}" in found
    # the same model and pairs give the same accuracy as the evaluation at the end of training
    assert found["verification.accuracy"] == pytest.approx(metrics["faces_pairs.accuracy"], abs=1e-9)
    lines = (ev / "scores.csv").read_text().splitlines()
    pairs = (face_rec / "faces_pairs.txt").read_text().split("\n")[1:]
    pairs = [p for p in pairs if p.strip()]
    assert len(lines) == len(pairs) == 40
    assert [int(ln.split(",")[1]) for ln in lines] == [int(len(p.split()) == 3) for p in pairs]
    assert (ev / "roc.png").exists() and (ev / "det.png").exists() and (ev / "manifest.json").exists()


def test_killed_run_resumes_from_its_s3_checkpoint_to_the_same_weights_as_an_uninterrupted_run(
        face_rec, tmp_path, s3_env):
    """A new pod: SIGKILL once a mid-run checkpoint is on S3, start again with the same parameters in an
    empty output folder; it resumes from S3, retrains nothing before that step, and ends bitwise equal."""
    from facepipe.config import from_dict
    from facepipe.recognition.config import RecognitionTrainConfig
    from facepipe.training.mirror import CheckpointMirror

    s3_env.create_bucket("checkpoints")
    uri = f"s3://checkpoints/{tmp_path.name}/train_recognition"
    values = {**TINY, "epochs": 3, "checkpoint_every": 3, "deterministic": True, "augment": "flip_jitter",
              "partial_fc_sample_rate": 0.5, "dropout": 0.1}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(FACEPIPE + ["train-recognition", str(face_rec), str(killed)]
                            + _sets({**values, "checkpoint_uri": uri}), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env(torch.get_num_threads()))  # same threads: same arithmetic
    mirror, uploaded = CheckpointMirror(uri, 0, 1, tmp_path / "unused", 2), None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        uploaded = mirror.newest()
        if uploaded is not None and uploaded >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    cfg = from_dict(RecognitionTrainConfig, {**values, "checkpoint_uri": uri})
    logger = MemoryLogger()
    resumed = train_recognition(cfg, face_rec, tmp_path / "new_pod", logger)
    assert resumed["resumed_from_step"] >= uploaded >= 6
    logged = sorted({step for key, _, step in logger.metrics if key == "train.loss"})
    assert logged[0] == resumed["resumed_from_step"] + 1, "steps before the checkpoint were trained again"
    straight = train_recognition(from_dict(RecognitionTrainConfig, values), face_rec, tmp_path / "straight")
    assert resumed["steps"] == straight["steps"] == 30
    assert_same_weights(tmp_path / "new_pod" / "model.pt", tmp_path / "straight" / "model.pt")
    kept = [e.name for e in storage.ls(uri)]
    assert kept[-1] == "step-000000030/" and len(kept) <= 2, kept  # pruned to the last 2


def test_resume_with_a_different_config_is_refused_naming_the_keys(face_rec, tiny_cfg, tmp_path):
    train_recognition(tiny_cfg(max_steps=2, checkpoint_every=1), face_rec, tmp_path)
    with pytest.raises(ConfigError, match=r"lr: 0\.05 -> 0\.2.*keys that differ: \['lr', 'm2'\]"):
        train_recognition(tiny_cfg(max_steps=2, checkpoint_every=1, lr=0.2, m2=0.3), face_rec, tmp_path)


def test_time_budget_stops_training_with_the_lr_annealed(face_rec, tiny_cfg, tmp_path):
    logger = MemoryLogger()
    cfg = tiny_cfg(epochs=100, time_budget_min=0.03, schedule="cosine", checkpoint_every=0)
    metrics = train_recognition(cfg, face_rec, tmp_path, logger=logger)
    assert 1 <= metrics["steps"] < 100 * 10
    lrs = [v for k, v, _ in logger.metrics if k == "train.lr"]
    assert lrs[-1] < 0.25 * max(lrs)  # decayed by the clock: by steps it would still be at its peak


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(face_rec, tiny_cfg, tmp_path):
    cfg = tiny_cfg(loss="softmax", lr=1e30, clip_grad=0.0, checkpoint_every=1, max_steps=10, weight_decay=0.0)
    with pytest.raises(FacepipeError, match=r"loss became (nan|inf).*last good checkpoint is .*step-0+1"):
        train_recognition(cfg, face_rec, tmp_path)
    good = latest_checkpoint(tmp_path)
    state = torch.load(good / "rank0.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["backbone"].values() if v.is_floating_point())
    assert not (tmp_path / "model.pt").exists()


def test_ddp_with_two_cpu_processes_trains(face_rec, tmp_path):
    """torchrun, gloo, the classifier sharded over 2 ranks with Partial FC and center loss."""
    out = tmp_path / "ddp"
    values = {**TINY, "batch_size": 8, "max_steps": 6, "checkpoint_every": 3, "partial_fc_sample_rate": 0.5,
              "center_loss_weight": 0.1, "log_every": 1}
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "facepipe.cli",
                           "train-recognition", str(face_rec), str(out)] + _sets(values),
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 6 and np.isfinite(metrics["train.loss"])
    ckpt = latest_checkpoint(out)
    shards = [torch.load(ckpt / f"rank{r}.pt", weights_only=True)["head"]["weight"] for r in (0, 1)]
    assert [s.shape[0] for s in shards] == [8, 8]  # 16 classes split over the ranks
    blob = torch.load(out / "model.pt", weights_only=True)
    assert blob["num_classes"] == 16


def test_sharded_head_gives_the_single_process_loss_and_gradients(tmp_path):
    """Two gloo ranks, each holding half the class centers, reproduce the full classifier's loss
    and its embedding gradient."""
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    emb = torch.randn(8, 16)
    labels = torch.tensor([0, 5, 9, 3, 3, 7, 1, 8])
    weight = torch.randn(10, 16)
    from facepipe.recognition.losses import MarginHead

    full = MarginHead(10, 16, "arcface", (1.0, 0.5, 0.0), 16.0)
    full.weight.data.copy_(weight)
    e = emb.clone().requires_grad_(True)
    loss, correct = full(e, labels)
    loss.backward()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sharded_worker, args=(str(tmp_path), port, emb, labels, weight), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"r{r}.pt") for r in (0, 1)]
    for r in results:
        assert r["loss"] == pytest.approx(loss.item(), rel=1e-5)
        assert r["correct"] == correct.item()
    grad = torch.cat([results[0]["grad"], results[1]["grad"]])
    # each rank's backbone gradient is world x the global-mean gradient (DDP averages it back)
    assert torch.allclose(grad / 2, e.grad, atol=1e-6)
    wgrad = torch.cat([results[0]["wgrad"], results[1]["wgrad"]])
    assert torch.allclose(wgrad, full.weight.grad, atol=1e-6)


def _sharded_worker(rank, out, port, emb, labels, weight):
    import torch.distributed as dist

    from facepipe.recognition.losses import MarginHead

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    head = MarginHead(10, 16, "arcface", (1.0, 0.5, 0.0), 16.0)
    head.weight.data.copy_(weight[head.start:head.start + head.num_local])
    e = emb[rank * 4:(rank + 1) * 4].clone().requires_grad_(True)
    loss, correct = head(e, labels[rank * 4:(rank + 1) * 4])
    loss.backward()
    torch.save({"loss": loss.item(), "correct": correct.item(), "grad": e.grad, "wgrad": head.weight.grad},
               Path(out) / f"r{rank}.pt")
    dist.destroy_process_group()


# ------------------------------------------------------------------ bad input

def _pack_tree(tmp_path, identities: dict[str, int]) -> Path:
    import cv2

    from facepipe.data.pack import PackConfig, pack

    tree = tmp_path / "tree"
    rng = np.random.default_rng(0)
    for name, n in identities.items():
        (tree / name).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(tree / name / f"{i}.jpg"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    pack(PackConfig(size=64, workers=1), tree, tmp_path / "rec", progress=False)
    return tmp_path / "rec"


def test_one_identity_dataset_is_refused(tmp_path, tiny_cfg):
    rec = _pack_tree(tmp_path, {"alice": 20})
    with pytest.raises(DataError, match="1 identity; training needs at least 2"):
        train_recognition(tiny_cfg(), rec, tmp_path / "out")


def test_property_disagreeing_with_labels_is_refused(tmp_path, tiny_cfg):
    rec = _pack_tree(tmp_path, {"alice": 10, "bob": 10})
    (rec / "property").write_text("5,64,64\n")
    with pytest.raises(DataError, match="property"):
        train_recognition(tiny_cfg(), rec, tmp_path / "out")


def test_empty_or_missing_dataset_is_refused(tmp_path, tiny_cfg):
    from facepipe.data.insightface import InsightFaceWriter, write_property

    with pytest.raises(DataError, match="not found|no train.rec"):
        train_recognition(tiny_cfg(), tmp_path / "nothing", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with InsightFaceWriter(empty):
        pass
    write_property(empty / "property", 1, 64, 64)
    with pytest.raises(DataError, match="no images|0 identit|classes"):
        train_recognition(tiny_cfg(), empty, tmp_path / "out")


@pytest.mark.parametrize("sets,message", [
    (["backbone=resnet9000"], r"backbone: 'resnet9000' is not allowed; choose one of \['iresnet18'"),
    (["loss=magface"], r"loss: 'magface' is not allowed; choose one of"),
    (["loss=arcface", "m2=2.0"], r"m2: 2.0 is out of range; expected <= 1.57"),
    (["loss=cosface", "m3=1.5"], r"m3: 1.5 is out of range; expected < 1"),
    (["loss=sphereface", "m1=0.5"], r"m1: 0.5 is out of range; expected >= 1"),
    (["loss=cosface", "m2=0.5"], r"loss 'cosface' has no m2 margin; m2 is used by \['arcface', 'combined'\]"),
    (["loss=triplet", "batch_size=10", "pk_images=4"], r"batch_size: 10 is not a multiple of pk_images=4"),
])
def test_bad_settings_name_the_key_and_what_is_allowed(sets, message, face_rec, tmp_path):
    proc = subprocess.run(FACEPIPE + ["train-recognition", str(face_rec), str(tmp_path)] + sum([["--set", s] for s in sets], []),
                          capture_output=True, text=True, env=_env(), timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    import re

    assert re.search(message, proc.stderr), proc.stderr


def test_model_averaging_ships_the_average_and_resumes_it_exactly(face_rec, tiny_cfg, tmp_path):
    """ema_decay: model.pt holds the averaged weights (not the last ones), and a run resumed from a
    mid-run checkpoint ends with the same average as one that was never stopped."""
    cfg = tiny_cfg(ema_decay=0.9, max_steps=6, checkpoint_every=3, deterministic=True, augment="flip_jitter")
    train_recognition(cfg, face_rec, tmp_path / "straight")
    shipped = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    last = torch.load(latest_checkpoint(tmp_path / "straight") / "rank0.pt", weights_only=True)
    assert int(last["average"]["n_averaged"]) == 6
    for k, v in shipped.items():
        assert torch.equal(v, last["average"][f"module.{k}"]), k
    assert any(not torch.equal(shipped[k], last["backbone"][k]) for k in shipped if shipped[k].is_floating_point())

    # the same run stopped after step 3: drop what came after, train again in the same folder
    stopped = tmp_path / "stopped"
    shutil.copytree(tmp_path / "straight", stopped)
    assert rewind_one_checkpoint(stopped).name == "step-000000003"
    resumed = train_recognition(cfg, face_rec, stopped)
    assert resumed["resumed_from_step"] == 3
    assert_same_weights(tmp_path / "straight" / "model.pt", stopped / "model.pt")
