"""The step records: one per step, each resolving to a real config, function and component."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest

from facepipe.steps import PIPELINE_STEPS, STEPS
from tests.conftest import PROJECT_ROOT

RECORD = PROJECT_ROOT / "src" / "facepipe" / "steps.py"
# A literal naming this many steps is a table of steps (one or two is a step talking about a neighbour).
TABLE_SIZE = 3


def _step_tables(path: Path) -> list[tuple[int, list[str]]]:
    """(line, steps named) of each dict/list/tuple/set literal naming TABLE_SIZE or more steps."""
    spellings = {s: s for s in STEPS} | {s.replace("_", "-"): s for s in STEPS}
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.Dict, ast.List, ast.Tuple, ast.Set)):
            named = {spellings[c.value] for c in ast.walk(node)
                     if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value in spellings}
            if len(named) >= TABLE_SIZE:
                found.append((node.lineno, sorted(named)))
    return found


def test_the_steps_are_listed_only_in_their_records():
    places = {}
    for folder in ("src", "pipeline", "components"):
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            for line, named in _step_tables(path):
                places[f"{path.relative_to(PROJECT_ROOT)}:{line}"] = named
    record = f"{RECORD.relative_to(PROJECT_ROOT)}:"
    assert any(p.startswith(record) for p in places)  # the finder sees the one table there is
    others = {p: named for p, named in places.items() if not p.startswith(record)}
    assert not others, f"steps listed outside {RECORD.name}; derive these from STEPS: {others}"


@pytest.mark.parametrize("name", list(STEPS))
def test_each_record_resolves_to_its_config_and_function(name):
    step = STEPS[name]
    assert step.name == name
    assert dataclasses.is_dataclass(step.config_class())
    step.config_class()()  # the defaults are a valid config
    signature = inspect.signature(step.step_function())
    for arg in [p.arg for p in step.inputs] + ["out_dir"]:
        assert arg in signature.parameters, f"{step.function} has no argument {arg!r}"
    producers = {s.output for s in STEPS.values()}
    assert {p.artifact for p in step.inputs} <= producers, "an input no step writes"
    if step.command:
        from facepipe.cli import load_command

        assert hasattr(load_command(step.command), "run")


@pytest.mark.parametrize("name", [s for s in PIPELINE_STEPS if s != "synth"])
def test_each_pipeline_step_has_a_component_matching_its_ports(name, monkeypatch):
    from facepipe.orchestration import images
    from pipeline.pipeline import ARTIFACT_TYPES, HOSTED

    if not images.lock_path().exists():
        monkeypatch.setenv(images.UNPINNED_ENV, "1")
    step = STEPS[name]
    spec = getattr(importlib.import_module(f"components.{name}.component"), name).component_spec
    kinds = {s.output: ARTIFACT_TYPES[s.output_kind].schema_title for s in STEPS.values()}
    artifact_inputs = {k: v.type.split("@")[0] for k, v in spec.inputs.items() if v.type.startswith("system.")}
    hosted = [s for s, host in HOSTED.items() if host == name]
    # A task hosting its data source (pack) gets no artifact in; the others get one per port.
    expected_in = {} if hosted else {p.artifact: kinds[p.artifact] for p in step.inputs}
    assert artifact_inputs == expected_in
    outputs = {k: v.type.split("@")[0] for k, v in spec.outputs.items() if k not in ("metrics", "report", "lineage")}
    assert outputs == {STEPS[s].output: kinds[STEPS[s].output] for s in hosted + [name]}
    # Nothing that changes per run is a step input (it would be part of the cache key); pack gets the data's digest.
    assert not {"output_uri", "mlflow_parent_run_id", "mlflow_experiment"} & set(spec.inputs)
    assert spec.outputs["lineage"].type == "String"
    assert ("data_digest" in spec.inputs) == bool(hosted)
    assert (PROJECT_ROOT / "components" / name / "README.md").exists()
