"""The MLflow UI as a person sees it, in headless Chromium, on two real tiny runs tracked by a real
`mlflow server` (sqlite store, artifacts in S3): `facepipe run --job tiny`, then `facepipe rerun
evaluate --set batch_size=8`, so the runs differ in one parameter.

Checked in the rendered page (not the REST API): the links facepipe makes open the training runs
(not the GenAI overview); the runs table's Source and Dataset columns; the compare view lines up the
differing parameter and the metrics; a run's artifacts show the plots (ROC, loss curves) as images
that loaded; the registered models are listed and linked from their runs. Screenshots go to
$FACEPIPE_BROWSER_SHOTS (`make test-browser` sets docs/img; else the session's temp folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facepipe import tracking
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.browser

EXPERIMENT = "browser-ui"
FACEPIPE = [sys.executable, "-m", "facepipe.cli"]
# Metrics the compare view shows in its first rows (it draws only the rows in view: a virtual grid).
METRICS = ("detection.ap50", "detection.ap50_easy", "identification.dir_at_far_1e-1")
MODELS = ("facepipe-detector", "facepipe-recognizer", "facepipe-recognize")


def facepipe(*args, env):
    done = subprocess.run(FACEPIPE + list(args), cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"facepipe {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


@pytest.fixture(scope="module")
def runs(mlflow_server, tmp_path_factory):
    """Two tracked runs of the tiny job differing in evaluate.batch_size (16, then 8 in a rerun)."""
    from mlflow.tracking import MlflowClient

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OBS_", "MLFLOW_", "FACEPIPE_"))}
    env.update(MLFLOW_TRACKING_URI=mlflow_server.uri, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    folder = tmp_path_factory.mktemp("browser-runs")
    common = ["--runs-dir", str(folder), "--experiment", EXPERIMENT]
    facepipe("run", "--job", "tiny", *common, env=env)
    (first,) = [json.loads(p.read_text()) for p in folder.glob("*/run.json")]
    facepipe("rerun", "evaluate", "--from", first["id"], "--set", "batch_size=8", *common, env=env)
    (second,) = [r for r in (json.loads(p.read_text()) for p in folder.glob("*/run.json")) if r["id"] != first["id"]]

    client = MlflowClient(mlflow_server.uri)
    parents = [r["mlflow"]["parent_run_id"] for r in (first, second)]
    experiment = client.get_run(parents[0]).info.experiment_id

    def step_run(parent: str, step: str) -> str:
        (run,) = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}' "
                                                  f"and tags.`facepipe.step` = '{step}'")
        return run.info.run_id

    return {"server": mlflow_server.uri, "experiment": experiment, "parents": parents,
            "names": [first["id"], second["id"]], "evaluate": step_run(parents[1], "evaluate"),
            "build_gallery": step_run(parents[0], "build_gallery"),
            "train_detection": step_run(parents[0], "train_detection"),
            "train_recognition": step_run(parents[0], "train_recognition")}


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return Path(os.environ.get("FACEPIPE_BROWSER_SHOTS") or tmp_path_factory.mktemp("screenshots"))


@pytest.fixture(scope="module")
def page(browser, runs):
    """The browser on the MLflow UI, its side panels closed (they would cover the screenshots)."""
    browser.get(tracking.ui_url(runs["server"], "models"))
    browser.script("""
        localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
        localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');""")
    browser.get("about:blank")  # the next page loads afresh with those settings (a new hash alone would not)
    return browser


def row_cells(page, first_cell: str) -> list[list[str]]:
    """The cells of every table row whose first cell reads `first_cell`."""
    return page.script("""
        return [...document.querySelectorAll('tr')]
          .filter(tr => tr.children.length && tr.children[0].innerText.trim() === arguments[0])
          .map(tr => [...tr.children].map(c => c.innerText.trim()));""", first_cell)


def metric_rows(page) -> dict[str, list[str]]:
    """The compare view's metrics as drawn: a grid of names beside a grid of values, one row per
    metric, a name and its values at the same height."""
    grids = page.script("""
        return [...document.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer')].map(g =>
          [...g.children].map(c => [c.style.top, c.style.left, c.innerText.trim()]));""")
    assert len(grids) == 2, f"expected the names and values grids of the metrics table, found {len(grids)}"
    names, values = grids
    by_top: dict[str, list[tuple[float, str]]] = {}
    for top, left, text in values:
        by_top.setdefault(top, []).append((float(left.rstrip("px") or 0), text))
    return {name: [text for _, text in sorted(by_top.get(top, []))] for top, _, name in names}


def loaded_images(page) -> int:
    """Images on the page that the browser decoded (a broken or missing PNG has no natural width)."""
    return page.script("return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;")


def wait_until(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"waited {timeout:.0f}s for {what}"
        time.sleep(0.5)


def test_links_open_the_training_runs_with_source_and_dataset(page, runs, shots):
    page.get(tracking.ui_url(runs["server"], f"experiments/{runs['experiment']}"))
    text = page.wait_for_text("Run Name", "Dataset", "Source", "facepipe run")
    assert "/overview" not in page.script("return location.href"), "opened on the GenAI overview"
    assert "Token Usage" not in text
    # The grid draws a row in parts (pinned and scrolled columns); one row-index joins them.
    rows = page.script("""
        const rows = {};
        for (const r of document.querySelectorAll('[role=row][row-index]'))
          rows[r.getAttribute('row-index')] = (rows[r.getAttribute('row-index')] || '') + '\\n' + r.innerText;
        return Object.values(rows);""")
    for name in runs["names"]:
        (row,) = [r for r in rows if name in r]
        assert "facepipe run" in row and "images" in row, row
    # Opened (the [+] beside a run's name), the step runs show their own inputs: train_recognition
    # read the packed records.
    page.script("document.querySelectorAll('[role=row] [data-component-id$=\"runnamecellrenderer.tsx_46\"]')"
                ".forEach(b => b.click());")
    page.wait_for_text("train_recognition", "records (", "facepipe train_recognition")
    page.screenshot(shots / "mlflow-runs.png")


def test_compare_view_lines_up_the_changed_parameter_and_the_metrics(page, runs, shots):
    page.get(tracking.compare_url(runs["server"], runs["parents"], [runs["experiment"]]))
    page.wait_for_text("Comparing 2 Runs", "evaluate__batch_size", *METRICS)
    assert row_cells(page, "evaluate__batch_size") == [["evaluate__batch_size", "16", "8"]]
    assert row_cells(page, "train_recognition__backbone") == [["train_recognition__backbone", "mobilefacenet",
                                                                "mobilefacenet"]]
    drawn = metric_rows(page)
    for metric in METRICS:
        a, b = drawn[metric]  # one value per run
        assert 0.0 <= float(a) <= 1.0 and 0.0 <= float(b) <= 1.0, (metric, a, b)
    # "Show diff only" keeps the changed parameter and drops the equal ones.
    page.script("document.querySelector('[aria-label=\"Parameters - Show diff only\"]').click();")
    page.wait_for_text("evaluate__batch_size")
    assert row_cells(page, "train_recognition__backbone") == [] and row_cells(page, "evaluate__batch_size")
    page.script("document.querySelector('[aria-label=\"Parameters - Show diff only\"]')"
                ".scrollIntoView({block: 'start'});")
    wait_until(lambda: "detection.ap50" in metric_rows(page), "the metrics grid to redraw after scrolling")
    page.screenshot(shots / "mlflow-compare.png")


@pytest.mark.parametrize("step, plot, others", [
    ("evaluate", "roc.png", ("det.png", "cmc.png")),
    ("train_detection", "loss_curve.png", ("pr_curve.png",)),
    ("train_recognition", "training.png", ()),
])
def test_run_artifacts_show_the_plots(page, runs, shots, step, plot, others):
    page.get(tracking.run_url(runs["server"], runs["experiment"], runs[step], f"artifacts/plots/{plot}"))
    page.wait_for_text("Artifacts", "plots", f"plots/{plot}", *others, "metrics.json")
    wait_until(lambda: loaded_images(page) > 0, f"{plot} to load as an image")
    if step == "evaluate":
        page.screenshot(shots / "mlflow-run-artifacts.png")


def test_registered_models_are_listed_and_linked_from_their_runs(page, runs, shots):
    page.get(tracking.ui_url(runs["server"], "models"))
    page.wait_for_text("Registered Models", *MODELS)
    # A one-time "new registry UI" announcement covers the list in the screenshot: closed as a person
    # would, if it is there (it is no part of what is checked).
    page.script("document.querySelectorAll('[role=dialog] button[aria-label=Close]').forEach(b => b.click());")
    time.sleep(1)
    page.screenshot(shots / "mlflow-models.png")
    for step, model in (("train_detection", "facepipe-detector"), ("train_recognition", "facepipe-recognizer"),
                        ("build_gallery", "facepipe-recognize")):
        page.get(tracking.run_url(runs["server"], runs["experiment"], runs[step]))
        text = page.wait_for_text("Registered models", model, "Datasets", f"facepipe {step}")
        assert text.rindex(model) > text.index("Registered models"), "the run links its model version"
