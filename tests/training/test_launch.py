"""`nproc_per_node`: a step fans out into local ranks (torch's elastic launcher) from the pipeline and
the CLI alike, and trains as the same step under a hand-started torchrun does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

TINY_JOB = PROJECT_ROOT / "jobs" / "tiny.yaml"


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{PROJECT_ROOT / 'src'}{os.pathsep}{PROJECT_ROOT}"}


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_pipeline_step_with_two_ranks_matches_a_torchrun_run(tmp_path):
    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "facepipe.cli", "run", "--job", str(TINY_JOB), "--set",
                           "train_recognition.nproc_per_node=2", "--no-track", "--runs-dir", str(runs)],
                          cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    logs = "".join(p.read_text() for p in runs.glob("*/logs/train_recognition.log"))  # the step's own lines
    assert "train_recognition: starting 2 ranks on this node" in logs
    record = json.loads(next(runs.glob("*/run.json")).read_text())
    piped = _metrics(PROJECT_ROOT / record["outputs"]["recognizer"])
    assert piped["world_size"] == 2

    # the same step by hand: torchrun, two ranks, the same job section and seed, on the run's packed data
    out = tmp_path / "torchrun"
    torchrun = Path(sys.executable).parent / "torchrun"
    by_hand = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "facepipe.cli",
                              "train-recognition", str(PROJECT_ROOT / record["outputs"]["records"]), str(out),
                              "--config", str(TINY_JOB)], env=_env(), capture_output=True, text=True, timeout=600)
    assert by_hand.returncode == 0, by_hand.stderr[-3000:]
    alone = _metrics(out)
    assert alone["world_size"] == 2 and alone["steps"] == piped["steps"]
    assert alone["train.loss"] == pytest.approx(piped["train.loss"], rel=1e-5)
