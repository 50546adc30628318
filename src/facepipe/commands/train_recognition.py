"""`facepipe train-recognition DATA_PATH MODEL_OUTPUT_PATH`: train (or resume) a face recognizer.

Under `torchrun --nproc_per_node N -m facepipe.cli train-recognition ...` every process runs this
command; only rank 0 talks to MLflow. Logged to MLflow whenever MLFLOW_TRACKING_URI is set.
"""

from __future__ import annotations

from facepipe.commands.step_command import add_step_arguments, run_step_command

HELP = "train a face recognizer (IResNet/MobileFaceNet, margin or metric losses) on a packed .rec dataset"


def add_arguments(parser) -> None:
    add_step_arguments(parser, "train_recognition", "MODEL_OUTPUT_PATH",
                       "output folder (model.pt, model.onnx, metrics.json, plots); rerunning with the same "
                       "local folder resumes from its checkpoints")


def run(args) -> int:
    import json
    import os

    # A remote output is written locally and published by rank 0 when training finishes (resume needs
    # a local or shared MODEL_OUTPUT_PATH: the checkpoints live there).
    metrics = run_step_command(args, "train_recognition", main_process=int(os.environ.get("RANK", "0")) == 0)
    if metrics:
        print(json.dumps(metrics, sort_keys=True))
    return 0
