"""A step killed mid-run resumes from the last checkpoint it uploaded (runs/checkpoints, the local stand-in for
the pipeline root) when the run is started again, in a fresh output folder as a new pod would have."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_killed_training_resumes_from_its_checkpoint(tmp_path):
    from facepipe.training.mirror import CheckpointMirror

    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "facepipe.cli", "run", "--job", str(PROJECT_ROOT / "jobs" / "tiny.yaml"),
           "--set", "train_recognition.max_steps=40", "--set", "train_recognition.checkpoint_every=2",
           "--no-track", "--runs-dir", str(runs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    checkpoint = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            uploaded = list((runs / "checkpoints" / "train_recognition").glob("*"))
            checkpoint = CheckpointMirror(str(uploaded[0]), 0, 1, tmp_path, 2).newest() if uploaded else None
            if checkpoint is not None:
                break
            time.sleep(0.2)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # the run and its step subprocess, mid-training
        first.wait(30)
        log.close()
    assert checkpoint is not None, (tmp_path / "first.log").read_text()[-3000:]

    second = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    record = max((json.loads(p.read_text()) for p in runs.glob("*/run.json")), key=lambda r: r["start"] + r["id"])
    out = (runs / record["id"] / "logs" / "train_recognition.log").read_text()  # the step's own lines
    assert re.search(r"fetched the checkpoint of step \d+ \(rank 0\) from \S*runs/checkpoints/train_recognition/", out)
    resumed = int(re.search(r"resuming from \S*checkpoints/step-\d+ \(step (\d+)\)", out).group(1))
    assert resumed >= checkpoint
    assert record["status"] == "succeeded"
    recognizer = PROJECT_ROOT / record["outputs"]["recognizer"]
    assert (recognizer / "model.pt").exists()
    assert json.loads((recognizer / "metrics.json").read_text())["resumed_from_step"] == resumed  # not from 0
    assert not list((runs / "checkpoints" / "train_recognition").glob("*")), "checkpoints kept after success"
    runs_listing = subprocess.run([sys.executable, "-m", "facepipe.cli", "runs", "--runs-dir", str(runs)],
                                  capture_output=True, text=True, cwd=PROJECT_ROOT).stdout
    assert "interrupted" in runs_listing  # the killed run is not shown as still running
