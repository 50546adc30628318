"""A non-editable install of facepipe runs the pipeline from any folder: the spec, jobs and images lock ship with it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

SHIPPED = ["pyproject.toml", "pipeline.yaml", "jobs", "images/images.lock.json"]


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with facepipe installed from a copy of the project (not editable); its other
    dependencies come from this venv's site-packages through a path line in a .pth file, which does
    not run that folder's own .pth files, so the editable facepipe of this checkout stays out."""
    tmp = tmp_path_factory.mktemp("install")
    project = tmp / "project"
    shutil.copytree(PROJECT_ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in SHIPPED:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (PROJECT_ROOT / name).is_dir() else shutil.copy2
        copy(PROJECT_ROOT / name, project / name)
    venv = tmp / "venv"
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site, "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: pip sees this venv's facepipe record through the .pth and must leave it be.
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--ignore-installed",
          "--disable-pip-version-check", project], env=_clean_env(), cwd=tmp)
    return venv


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "FACEPIPE_", "MLFLOW_", "AWS_", "OBS_", "VIRTUAL_ENV"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_the_installed_package_is_the_one_imported(installed, tmp_path):
    where = _run([installed / "bin" / "python", "-c",
                  "import facepipe, facepipe.orchestration.local as local; print(facepipe.__file__); "
                  "print(local.DEFAULT_PIPELINE)"], env=_clean_env(), cwd=tmp_path).stdout.split()
    assert Path(where[0]).is_relative_to(installed), where
    assert Path(where[1]) == installed / "share" / "facepipe" / "pipeline.yaml"
    assert Path(where[1]).read_text() == (PROJECT_ROOT / "pipeline.yaml").read_text()


def test_facepipe_run_tiny_from_another_folder(installed, tmp_path):
    done = _run([installed / "bin" / "facepipe", "run", "--job", "tiny"], env=_clean_env(), cwd=tmp_path,
                timeout=900)
    (record_file,) = (tmp_path / "runs").glob("*/run.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "succeeded", record
    assert set(record["steps"].values()) == {"executed"}, record["steps"]
    assert Path(record["outputs"]["recognizer"], "model.pt").is_file()
    assert Path(record["outputs"]["gallery"], "manifest.json").is_file()
    metrics = json.loads(Path(record["outputs"]["metrics"]).read_text())
    assert "verification.accuracy" in metrics and "detection.ap50" in metrics
    assert record["id"] in done.stdout
