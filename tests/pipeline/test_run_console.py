"""What `facepipe run` prints and logs: one line per step, each step's whole output in runs/<id>/logs/,
a failed step's last log lines, `--verbose`, and `facepipe compare` on two real runs."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from facepipe.orchestration.run_console import RunConsole
from facepipe.progress import parse_line
from pipeline.pipeline import TASKS
from tests.pipeline.test_local_run import facepipe

def latest(runs: Path) -> dict:
    return max((json.loads(p.read_text()) for p in runs.glob("*/run.json")), key=lambda r: r["start"] + r["id"])


# -- the console on lines as kfp.local writes them (no pipeline run) ---------------------------------

KFP_LINES = [
    "20:23:20.761 - INFO - Running pipeline: \x1b[95m'facepipe'\x1b[0m",
    "20:23:21.960 - INFO - Executing task \x1b[96m'train-recognition'\x1b[0m",
    "20:23:21.960 - INFO - Streamed logs:",
    "    [KFP Executor 2026-12-01 20:23:22,001 INFO]: Got executor_input:",
    "    train-recognition: 2/3 step | 1.1 step/s | ETA 1s | epoch=0.6667 | loss=41.3 | lr=0.05 | samples/s=24.3",
    "    Traceback (most recent call last):",
    "    facepipe.errors.DataError: /x/records/train.rec: truncated record at offset 96",
    "",
    "20:23:41.028 - ERROR - Task \x1b[96m'train-recognition'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m",
    "20:23:41.030 - ERROR - Pipeline \x1b[95m'facepipe'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m",
]
ORDER = ["pack", "train-detection", "train-recognition", "build-gallery", "evaluate"]
UPSTREAM = {"pack": [], "train-detection": ["pack"], "train-recognition": ["pack"],
            "build-gallery": ["pack", "train-detection", "train-recognition"],
            "evaluate": ["build-gallery", "pack", "train-detection", "train-recognition"]}


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _feed(tmp_path, stream) -> str:
    console = RunConsole(tmp_path / "logs", ORDER, UPSTREAM, tmp_path / "kfp", stream=stream)
    console.logs.mkdir(parents=True)
    for line in KFP_LINES:
        console.line(line)
    console.finish({"pack": "reused", "train-detection": "not run", "train-recognition": "failed",
                    "build-gallery": "not run", "evaluate": "not run"})
    return stream.getvalue()


def test_console_sorts_lines_into_step_logs_and_shows_a_failure_plainly(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = _feed(tmp_path, io.StringIO())
    lines = out.splitlines()
    assert "\x1b" not in out and "\r" not in out  # not a terminal: plain lines
    assert lines[0].split() == ["pack", "reused", "(cached", "output", "of", "an", "earlier", "run)"]
    assert lines[1].split() == ["train_recognition", "running"]
    assert re.match(r"  train_recognition\s+failed\s+[0-9.]+ s  last lines of \S+train_recognition\.log:$", lines[2])
    assert "    | facepipe.errors.DataError: /x/records/train.rec: truncated record at offset 96" in lines
    assert [ln.split()[:2] for ln in lines[-3:]] == [["train_detection", "not"], ["build_gallery", "not"],
                                                     ["evaluate", "not"]]
    log = (tmp_path / "logs" / "train_recognition.log").read_text()
    assert "Got executor_input" in log and "finished with status FAILURE" in log and "\x1b" not in log
    assert "Executing task 'train-recognition'" in log
    run_log = (tmp_path / "logs" / "pipeline.log").read_text()
    assert "Running pipeline" in run_log and "Pipeline 'facepipe' finished" in run_log
    assert "Got executor_input" not in run_log


def test_on_a_terminal_the_running_line_is_redrawn_with_the_steps_progress(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    out = _feed(tmp_path, _Terminal())
    assert "\r\x1b[K" in out and "\x1b[31mfailed" in out
    assert "train-recognition 2/3 step, 1.1 step/s, ETA 1 s, epoch 0.6667, loss 41.3, samples/s 24.3" in out


def test_progress_lines_read_back():
    found = parse_line("    train-detection: 40/100 step | 2.5 step/s | ETA 24s | epoch=0.4 | loss=3.2")
    assert found == {"desc": "train-detection", "n": 40, "total": 100, "unit": "step", "rate": 2.5, "eta": 24,
                     "postfix": {"epoch": "0.4", "loss": "3.2"}}
    assert parse_line("pack: 8 id | 3.0 id/s")["total"] is None
    assert parse_line("[KFP Executor]: Got executor_input: 3 | 4") is None


# -- real runs of the tiny job -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tracked run of the tiny job (default sqlite store in the runs folder), as a pipe sees it."""
    runs = tmp_path_factory.mktemp("runs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FACEPIPE_"))}
    env.update(OMP_NUM_THREADS="1")
    done = facepipe("run", "--job", "tiny", "--runs-dir", str(runs), env=env)
    return runs, env, latest(runs), done


@pytest.mark.slow
def test_run_prints_one_line_per_step_and_a_short_summary(tiny):
    runs, _, record, done = tiny
    out = done.stdout + done.stderr
    lines = out.splitlines()
    assert len(lines) < 60, out
    assert "\x1b" not in out and "executor_input" not in out and "KFP Executor" not in out
    for step in TASKS:
        done_lines = [ln for ln in lines if re.match(rf"  {step}\s+done\s+[0-9.]+ (s|min)  \S", ln)]
        assert len(done_lines) == 1, (step, out)
    assert re.search(r"train_recognition\s+done .*loss [0-9.]+", out)
    assert re.search(r"evaluate\s+done .*verification acc [0-9.]+, rank-1 [0-9.]+", out)
    assert f"run {record['id']}: succeeded" in out
    assert record["outputs"]["recognizer"] in out and record["mlflow"]["parent_run_id"] in out
    assert "http://127.0.0.1:5000/#/experiments/" in out  # the UI link to the parent run


@pytest.mark.slow
def test_each_step_log_holds_its_executor_output(tiny):
    runs, _, record, _ = tiny
    logs = runs / record["id"] / "logs"
    for step in TASKS:
        text = (logs / f"{step}.log").read_text()
        assert "[KFP Executor" in text and "Got executor_input" in text, step
        assert "finished with status SUCCESS" in text and "\x1b" not in text, step
    assert re.search(r"train-recognition: 3/3 step \| [0-9.]+ step/s", (logs / "train_recognition.log").read_text())
    assert "Running pipeline" in (logs / "pipeline.log").read_text()


@pytest.mark.slow
def test_verbose_rerun_and_compare_list_exactly_the_changed_parameter(tiny):
    runs, env, first, _ = tiny
    done = facepipe("rerun", "evaluate", "--from", first["id"], "--set", "batch_size=8", "--verbose",
                    "--runs-dir", str(runs), env=env)
    second = latest(runs)
    assert second["id"] != first["id"]
    assert "Got executor_input" in done.stdout  # --verbose: everything live
    assert "finished with status SUCCESS" in (runs / second["id"] / "logs" / "evaluate.log").read_text()
    assert f"facepipe compare {first['id']} {second['id']}" in done.stdout

    for a, b in ((first["id"], second["id"]), (first["mlflow"]["parent_run_id"], second["mlflow"]["parent_run_id"])):
        out = facepipe("compare", a, b, "--runs-dir", str(runs), env=env).stdout
        lines = out.splitlines()
        start = next(i for i, ln in enumerate(lines) if ln.startswith("parameters that differ: 1 of "))
        end = next(i for i, ln in enumerate(lines) if ln.startswith("metrics: "))
        assert [ln.split() for ln in lines[start + 2:end]] == [["evaluate__batch_size", "16", "8"]], out
        assert any(ln.split()[:1] == ["verification.accuracy"] and len(ln.split()) >= 3 for ln in lines[end:]), out
        ids = quote(json.dumps([first["mlflow"]["parent_run_id"], second["mlflow"]["parent_run_id"]],
                               separators=(",", ":")), safe="")
        assert f"MLflow compare: http://127.0.0.1:5000/#/compare-runs?runs={ids}&experiments=%5B%22" in out, out


@pytest.mark.slow
def test_a_failing_step_shows_the_last_lines_of_its_log(tiny):
    runs, env, first, _ = tiny
    templates = Path(first["outputs"]["gallery"], "templates.npy")
    templates.write_bytes(b"corrupted")  # the cached gallery evaluate reads: its manifest digest no longer matches
    done = facepipe("rerun", "evaluate", "--from", first["id"], "--runs-dir", str(runs), env=env, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert len(out.splitlines()) < 60, out
    failed = latest(runs)
    assert failed["status"] == "failed" and failed["steps"]["evaluate"] == "failed"
    assert re.search(r"  evaluate\s+failed\s+[0-9.]+ s  last lines of \S+/evaluate\.log:", out), out
    shown = [ln for ln in out.splitlines() if ln.startswith("    | ")]
    assert 0 < len(shown) <= 20 and any("templates.npy: checksum mismatch" in ln for ln in shown), out
    for step in ("pack", "train_detection", "train_recognition", "build_gallery"):
        assert re.search(rf"  {step}\s+reused", out), (step, out)
    log = (runs / failed["id"] / "logs" / "evaluate.log").read_text()
    assert "Traceback" in log and "checksum mismatch" in log
