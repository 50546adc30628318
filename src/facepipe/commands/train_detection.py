"""`facepipe train-detection DATA_PATH MODEL_OUTPUT_PATH`: train RetinaFace on a label.txt tree.

DATA_PATH holds `train/images/ + train/label.txt` (and optionally `val/`); it may be a local path,
file://, s3:// or obs:// URI, as may MODEL_OUTPUT_PATH. Config: section `train_detection` of a job
file, then `--set key=value`, then the flags. Rerunning into the same local output resumes from its
last checkpoint. Multi-process: `torchrun --nproc_per_node N -m facepipe.cli train-detection ...`.
"""

from __future__ import annotations

from facepipe.commands.step_command import add_step_arguments, run_step_command

HELP = "train a RetinaFace face detector (MobileNet-0.25 or ResNet-50) with 5 landmarks"



def add_arguments(parser) -> None:
    add_step_arguments(parser, "train_detection", "MODEL_OUTPUT_PATH",
                       "output folder (model.pt, model.onnx, metrics.json, plots); rerunning resumes",
                       flags=("backbone", "epochs", "batch_size", "image_size", "lr", "workers", "time_budget_min"))


def run(args) -> int:
    import json
    import os

    main_process = int(os.environ.get("RANK", 0)) == 0
    metrics = run_step_command(args, "train_detection", main_process=main_process)
    if main_process:
        keys = [k for k in metrics if k.startswith(("val.ap50", "train.steps", "train.final_loss", "onnx"))]
        print(json.dumps({k: metrics[k] for k in sorted(keys)}))
        print(f"model: {args.out}/model.pt")
    return 0
