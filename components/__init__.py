"""KFP components, one folder per step: component.py (one line: `component(STEP)`), README.md, test_component.py."""

from __future__ import annotations

import dataclasses
from typing import Any

from facepipe.orchestration.params import RUN_PARAMETERS, step_parameters
from facepipe.steps import STEPS


_ARTIFACT_CLASSES = {"dataset": "Dataset", "model": "Model", "artifact": "Artifact"}


def component(step: str, hosts: tuple[str, ...] = ()):
    """The step's KFP component, generated from its record: one typed input per config key.

    Inputs: the step's input artifacts and `<step>__<key>` for every config key of the step and of
    the steps it `hosts` (pack hosts synth; then also `data_uri` and its `data_digest`), each with
    its default and description. Nothing that changes per run (the publish target, an MLflow run
    id) is an input of a pipeline step: it would be part of the cache key. A standalone step such
    as recognize takes `<artifact>_uri` strings instead, plus `output_uri` and `mlflow_parent_run_id`.
    Outputs: the steps' artifacts, `metrics`, `report` and, in the pipeline, `lineage` (which
    run made them). Its body hands everything to `component_runtime.run_component`.
    """
    record, kinds = STEPS[step], {s.output: s.output_kind for s in STEPS.values()}
    signature = Signature()
    arg = signature.arg

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
    if record.in_pipeline:
        arg("lineage", "OutputPath(str)", "the pipeline run and MLflow runs that made these outputs (JSON)")
    run_inputs = (("data_uri", "data_digest") if hosts else ()) if record.in_pipeline else ("output_uri", "mlflow_parent_run_id")
    for name in run_inputs:
        default, help = RUN_PARAMETERS.get(name) or ("", DATA_DIGEST_HELP)
        arg(name, "str", help, default)
    for s in hosts + (step,):
        for p in step_parameters(s):
            arg(p.name, p.kind.__name__, p.help, p.default)
    doc = record.help + ("" if not hosts else f" (hosting {', '.join(hosts)}: given data_uri or generated)")
    body = ("from facepipe.orchestration.component_runtime import run_component\n\n"
            f"run_component({step!r}, locals(), hosts={hosts!r})")
    return lightweight_component(step, signature, doc, body, record.image, f"components.{step}.component")


DATA_DIGEST_HELP = ("the given data's manifest digest (the pipeline's data-digest task): new data at the same "
                    "data_uri is a new cache key")


class Signature:
    """A generated component function's parameters (required first) and their `Args:` lines."""

    def __init__(self):
        self.required: list[str] = []
        self.optional: list[str] = []
        self.docs: list[str] = []

    def arg(self, name: str, annotation: str, help: str, default: Any = dataclasses.MISSING) -> None:
        if default is dataclasses.MISSING:
            self.required.append(f"{name}: {annotation}")
        else:
            self.optional.append(f"{name}: {annotation} = {default!r}")
        self.docs.append(f"        {name}: {' '.join(help.split())}")


def lightweight_component(name: str, signature: Signature, doc: str, body: str, image: str, module: str,
                          outputs: str = ""):
    """A KFP lightweight component from generated source: `def name(<signature>) -> outputs` with
    `doc`, the signature's `Args:` lines and `body`, run in the image named `image`. KFP runs a component from
    its function's source text (in the image, not this process), so the function is written out
    as source (registered with linecache for `inspect.getsource`)."""
    import linecache

    from kfp import dsl

    from facepipe.orchestration.images import image_reference

    indent = lambda text: "".join(f"    {line}\n" if line else "\n" for line in text.splitlines())
    params = signature.required + signature.optional
    source = (f"def {name}({', '.join(params)}){f' -> {outputs}' if outputs else ''}:\n"
              f'    """{doc}.\n\n    Args:\n' + "\n".join(signature.docs).replace("\\", "\\\\").replace('"""', "'''") +
              '\n    """\n' + indent(body))
    filename = f"<facepipe component {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": module, **{n: getattr(dsl, n) for n in (
        "Input", "Output", "OutputPath", "Dataset", "Model", "Artifact", "Metrics", "HTML", "PipelineTaskFinalStatus")}}
    exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # no PEP 563 string annotations
    return dsl.component(base_image=image_reference(image), install_kfp_package=False)(namespace[name])
