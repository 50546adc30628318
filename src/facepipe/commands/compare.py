"""`facepipe compare RUN_A RUN_B`: the parameters that differ and the metrics side by side, for two local
runs (ids or unique prefixes from runs/) or two MLflow runs (run ids), with the MLflow UI's compare URL."""

from __future__ import annotations

HELP = "compare two runs (local run ids, or MLflow run ids): the parameters that differ, metrics side by side"


def add_arguments(parser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="a local run id (or unique prefix), or an MLflow run id")
    parser.add_argument("run_b", metavar="RUN_B", help="the run to compare it with")
    parser.add_argument("--runs-dir", help="runs folder (default: $FACEPIPE_RUNS_DIR or ./runs)")
    parser.add_argument("--all-params", action="store_true", help="list the parameters that are equal too")


def load_side(ref: str, runs_dir=None) -> dict:
    """A run as {label, params (as MLflow holds them: text), metrics, mlflow: (tracking URI, run id) or None}."""
    import json
    from pathlib import Path

    from facepipe.errors import ConfigError
    from facepipe.orchestration import local
    from facepipe.secrets import redact_params

    base = local.runs_dir(runs_dir)
    if any(p.parent.name.startswith(ref) for p in base.glob(f"*/{local.RUN_RECORD}")):
        record = local.find_run(ref, base)
        metrics_file = Path(record.outputs.get("metrics") or "/nonexistent")
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        if record.status in ("succeeded", "failed"):
            metrics["pipeline_seconds"] = record.seconds
        origin = f", rerun of {record.from_run} from {record.rerun_step}" if record.from_run else ""
        return {"label": f"{record.id} (local, {record.status}{origin})",
                "params": {k: "" if v is None else str(v) for k, v in redact_params(record.arguments).items()},
                "metrics": metrics,
                "mlflow": (record.mlflow["tracking_uri"], record.mlflow["parent_run_id"]) if record.mlflow else None}
    from facepipe import tracking

    uri = local.tracking_store(base)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"run {ref!r}: no local run in {base} and no MLflow store at {uri}")
    try:
        data = tracking.run_data(ref, uri)
    except Exception as exc:  # MlflowException: not found, or the store does not answer
        raise ConfigError(f"run {ref!r}: no local run in {base}, and MLflow at {uri} says: "
                          f"{str(exc).splitlines()[0][:300]}") from None
    name = data["tags"].get("mlflow.runName", "")
    return {"label": f"{ref} (MLflow{', ' + name if name else ''})", "params": data["params"],
            "metrics": data["metrics"], "mlflow": (uri, ref)}


def _table(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _number(value) -> str:
    return "-" if value is None else f"{value:.6g}" if isinstance(value, (int, float)) else str(value)


def run(args) -> int:
    from facepipe import config
    from facepipe import tracking

    a, b = load_side(args.run_a, args.runs_dir), load_side(args.run_b, args.runs_dir)
    print(f"A: {a['label']}")
    print(f"B: {b['label']}")
    names = sorted(set(a["params"]) | set(b["params"]))
    differ = config.diff(a["params"], b["params"])
    print(f"parameters that differ: {len(differ)} of {len(names)}")
    shown = names if args.all_params else differ
    if shown:
        rows = [("parameter", "A", "B")] + [(k, a["params"].get(k, "(absent)"), b["params"].get(k, "(absent)"))
                                            for k in shown]
        print("\n".join(_table(rows)))
    metric_names = sorted(set(a["metrics"]) | set(b["metrics"]))
    print(f"metrics: {len(metric_names)}")
    if metric_names:
        rows = [("metric", "A", "B", "B - A")]
        for k in metric_names:
            va, vb = a["metrics"].get(k), b["metrics"].get(k)
            delta = f"{vb - va:+.4g}" if va is not None and vb is not None and va != vb else ""
            rows.append((k, _number(va), _number(vb), delta))
        print("\n".join(_table(rows)))
    if a["mlflow"] and b["mlflow"]:
        uri = a["mlflow"][0]
        try:
            experiments = [tracking.run_data(run_id, store)["experiment_id"] for store, run_id in (a["mlflow"], b["mlflow"])]
            url = tracking.compare_url(tracking.ui_base(uri), [a["mlflow"][1], b["mlflow"][1]], experiments)
            hint = "" if uri.startswith(("http://", "https://")) else " (start the UI: make mlflow-ui)"
            print(f"MLflow compare: {url}{hint}")
        except Exception as exc:  # noqa: BLE001 - the comparison above stands without the link
            print(f"MLflow compare: unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    else:
        print("MLflow compare: not tracked (a run made with --no-track)")
    return 0
