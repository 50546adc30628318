"""All ranks of one node for a training step (`nproc_per_node` > 1), started by torch's elastic launcher.

The one place a step fans out into processes: `facepipe.edge.call_step` sends a step here when its
config asks for more than one process and this process is not already a rank (torchrun, a TrainJob
or a ModelArts node started it). The ranks are spawned as torchrun `--standalone` would (c10d
rendezvous on a free local port, OMP_NUM_THREADS=1 unless set); rank 0 runs the step with a
MemoryLogger and hands its result and what it logged back, and the caller replays that onto its own
logger and publishes the output, so the CLI, a pipeline step and a container track alike.
"""

from __future__ import annotations

import os
import uuid

from facepipe.config import bounded

# Both may differ between a run and its resume (RESUME_FREE_KEYS): what must not differ is the world
# size, and the checkpoint itself refuses another one (its COMPLETE marker records it), so 0 and 2 on a
# 2-GPU node, or torchrun with 2 ranks and the default, resume each other while 2 and 4 do not.
SCALE_KEYS = ("nproc_per_node", "nodes")


def nproc_per_node_field():
    return bounded(1, low=0, high=64, help="processes (ranks) per node; 0: every visible GPU (1 on CPU); "
                                           "more than 1 starts them with torch's elastic launcher")


def nodes_field():
    return bounded(1, low=1, high=1024, help="nodes; more than 1: the pipeline step runs as a Kubeflow "
                                             "Trainer TrainJob of this many nodes")


def ranks_per_node(cfg) -> int:
    """`nproc_per_node` resolved: 0 means every visible GPU (one process on a CPU-only machine)."""
    n = getattr(cfg, "nproc_per_node", 1)
    if n:
        return n  # steps without the key (pack in the data image, which has no torch) stop here
    import torch

    return torch.cuda.device_count() or 1


def needs_launch(cfg) -> bool:
    """More than one rank wanted, and no launcher has started this process as one of them."""
    return "WORLD_SIZE" not in os.environ and ranks_per_node(cfg) > 1


def _rank(step_name: str, cfg, inputs: dict, out_dir: str, options: dict):
    """One rank: the step function, rank 0 recording what it logs."""
    from facepipe.run_logger import MemoryLogger, NullLogger
    from facepipe.steps import STEPS

    logger = MemoryLogger() if os.environ.get("RANK") == "0" else NullLogger()
    result = STEPS[step_name].step_function()(cfg, **inputs, out_dir=out_dir, logger=logger, **options)
    return (result, vars(logger)) if isinstance(logger, MemoryLogger) else None


def launch(step_name: str, cfg, inputs: dict, out_dir: str, logger, **options) -> dict:
    """Run the step on `ranks_per_node(cfg)` local ranks; returns rank 0's result."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    n = ranks_per_node(cfg)
    threads_set = "OMP_NUM_THREADS" not in os.environ
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: n ranks share the cores (read at spawn)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=f"facepipe-{uuid.uuid4()}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn")
    print(f"[facepipe] {step_name}: starting {n} ranks on this node", flush=True)
    try:
        result, logged = elastic_launch(config, _rank)(step_name, cfg, dict(inputs), str(out_dir), options)[0]
    finally:
        if threads_set:
            os.environ.pop("OMP_NUM_THREADS")
    by_step: dict = {}
    for key, value, step in logged["metrics"]:
        by_step.setdefault(step, {})[key] = value
    for step, metrics in by_step.items():
        logger.log_metrics(metrics, step=step)
    for path, artifact_path in logged["artifacts"]:
        logger.log_artifact(path, artifact_path)
    if logged["tags"]:
        logger.set_tags(logged["tags"])
    return dict(result or {})
