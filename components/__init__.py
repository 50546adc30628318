"""KFP components, one folder per step: component.py (one line: `component(STEP)`), README.md, test_component.py."""

from __future__ import annotations

import dataclasses
from typing import Any

from facepipe.orchestration.params import RUN_PARAMETERS, step_parameters
from facepipe.steps import STEPS


_ARTIFACT_CLASSES = {"dataset": "Dataset", "model": "Model", "artifact": "Artifact"}


def component(step: str, hosts: tuple[str, ...] = ()):
    """The step's KFP component, generated from its record: one typed input per config key.

    Inputs: the step's input artifacts (a standalone step such as recognize takes `<artifact>_uri`
    strings instead), `output_uri`, `mlflow_parent_run_id`, and `<step>__<key>` for every config key
    of the step and of the steps it `hosts` (pack hosts synth; then also `data_uri`), each with its
    default and description. Outputs: the steps' artifacts, `metrics` and `report`. KFP runs a
    component from its function's source text (in the image, not this process), so the function
    is written out as source (registered with linecache for `inspect.getsource`); its body hands
    everything to `component_runtime.run_component`.
    """
    import linecache

    from kfp import dsl

    from facepipe.orchestration.images import image_reference

    record, kinds = STEPS[step], {s.output: s.output_kind for s in STEPS.values()}
    required, optional, docs = [], [], []

    def arg(name: str, annotation: str, help: str, default: Any = dataclasses.MISSING) -> None:
        if default is dataclasses.MISSING:
            required.append(f"{name}: {annotation}")
        else:
            optional.append(f"{name}: {annotation} = {default!r}")
        docs.append(f"        {name}: {' '.join(help.split())}")

    fed_by_hosts = {STEPS[h].output for h in hosts}
    for port in {p.artifact: p for p in record.inputs if p.artifact not in fed_by_hosts}.values():
        if record.in_pipeline:
            arg(port.artifact, f"Input[{_ARTIFACT_CLASSES[kinds[port.artifact]]}]",
                port.help or f"the {port.artifact} artifact")
        else:
            arg(f"{port.artifact}_uri", "str", f"{port.help or port.artifact}; a path, file://, s3:// or obs:// URI"
                + ("; empty: none" if port.optional else ""))
    for s in hosts + (step,):
        arg(STEPS[s].output, f"Output[{_ARTIFACT_CLASSES[STEPS[s].output_kind]}]", f"what {s} writes")
    arg("metrics", "Output[Metrics]", "the step's final numbers")
    arg("report", "Output[HTML]", "a page with the metrics, plots and config")
    for name, (default, help) in RUN_PARAMETERS.items():
        if name != "data_uri" or hosts:
            arg(name, "str", help, default)
    for s in hosts + (step,):
        for p in step_parameters(s):
            arg(p.name, p.kind.__name__, p.help, p.default)
    doc = record.help + ("" if not hosts else f" (hosting {', '.join(hosts)}: given data_uri or generated)")
    source = (f"def {step}({', '.join(required + optional)}):\n"
              f'    """{doc}.\n\n    Args:\n' + "\n".join(docs).replace("\\", "\\\\").replace('"""', "'''") +
              '\n    """\n    from facepipe.orchestration.component_runtime import run_component\n\n'
              f"    run_component({step!r}, locals(), hosts={hosts!r})\n")
    filename = f"<facepipe component {step}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": f"components.{step}.component", **{n: getattr(dsl, n) for n in (
        "Input", "Output", "Dataset", "Model", "Artifact", "Metrics", "HTML")}}
    exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # no PEP 563 string annotations
    return dsl.component(base_image=image_reference(record.image), install_kfp_package=False)(namespace[step])
