"""The pipeline's steps, each described once: the `Step` record everything else is derived from.

The CLI's step commands, the KFP components' inputs and outputs, the pipeline wiring, the
component runtime, ModelArts jobs and the tests' step lists all read `STEPS`; nothing else lists
the steps. A step function is a plain function called by keyword:
`fn(config, **{port.arg: local_path for port in step.inputs}, out_dir=..., logger=...) -> dict`.
Adding a step = one record here + its step function + `components/<step>/component.py`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

DATA_IMAGE = "facepipe-data"    # numpy/opencv/kfp, no torch: synth and pack
TRAIN_IMAGE = "facepipe-train"  # with torch: training, gallery, evaluation, recognize
# Set by the pipeline on a task given GPUs (`Resources.gpus`) when compiled with
# --allow-cpu-torch-on-gpu; the trainers' device check (facepipe.training.context) then lets
# device=auto run on CPU in a GPU pod.
CPU_TORCH_ALLOWED_ENV = "FACEPIPE_ALLOW_CPU_TORCH"


@dataclass(frozen=True)
class Port:
    """One input of a step: which pipeline artifact feeds it and where inside it the function looks.

    `artifact` names a pipeline artifact (the `output` of another step); `layout` is the path
    inside that artifact's folder the function gets ("" = the folder itself, "model.pt" = a file).
    On the CLI a port is a positional argument; a path given there is taken as is.
    """

    arg: str                  # the step function's keyword argument
    artifact: str             # the pipeline artifact that feeds it
    layout: str = ""          # path inside the artifact handed to the function
    metavar: str = ""         # the CLI's name for it (the seed scripts' argument names)
    help: str = ""
    optional: bool = False

    def path_in(self, artifact_dir: str) -> str:
        """The local path the function gets, given the artifact's local folder."""
        return str(PurePosixPath(artifact_dir) / self.layout) if self.layout else str(artifact_dir)


@dataclass(frozen=True)
class Resources:
    """What a step asks of a cluster node (KFP task requests, ModelArts flavours)."""

    cpu: str = "2"
    memory: str = "4G"
    gpus: int = 0
    # Local disk for the task's input and output artifacts (the launcher copies them there) and its
    # scratch: a Kubernetes quantity, sized for the data the step reads; "" = the node's own disk.
    disk: str = ""
    # /dev/shm for DataLoader worker processes (they hand batches over through shared memory, and a
    # container's default 64 MB runs out); "" = the default.
    shm: str = ""


@dataclass(frozen=True)
class Step:
    name: str
    config: str                      # "module:Class"
    function: str                    # "module:function"
    inputs: tuple[Port, ...]
    output: str                      # the artifact the step writes (its `out_dir`)
    output_kind: str = "dataset"     # KFP artifact type: dataset | model | artifact
    image: str = TRAIN_IMAGE         # key in the images lock
    resources: Resources = field(default_factory=Resources)
    registered_model: str = ""       # MLflow model registry name for what the step trains
    command: str = ""                # the CLI command (`facepipe <command>`)
    seed_script: str = ""            # the seed's ModelArts script this step replaces
    in_pipeline: bool = True
    help: str = ""
    # What `facepipe run` shows of a finished step: (metric key, label); a key with `*` is a
    # pattern whose matches show under their own names (validation targets vary by config).
    headline: tuple[tuple[str, str], ...] = ()

    def config_class(self):
        return _resolve(self.config)

    def step_function(self):
        return _resolve(self.function)

    def local_inputs(self, artifact_dirs: dict[str, str]) -> dict[str, str]:
        """The function's input paths by argument, given each input artifact's local folder."""
        return {p.arg: p.path_in(artifact_dirs[p.artifact]) for p in self.inputs}


def _resolve(ref: str):
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


_DATA = Port("data_dir", "images", metavar="DATA_PATH", help="the data folder (faces/, faces_eval/, detection/)")
_DETECTOR = Port("detector_path", "detector", "model.pt", "DETECT_MODEL_PATH",
                 "a detector model.pt (from train-detection), or 'none': each image is one face", optional=True)
_RECOGNIZER = Port("recognizer_path", "recognizer", "model.pt", "RECOGNIZE_MODEL_PATH",
                   "a recognizer model.pt (from train-recognition)")
_GALLERY = Port("gallery_dir", "gallery", metavar="DB_PATH", help="a gallery folder (from build-gallery)")

STEPS: dict[str, Step] = {
    s.name: s
    for s in [
        Step("synth", "facepipe.data.synth:SynthConfig", "facepipe.data.synth:synthesize",
             inputs=(), output="images", image=DATA_IMAGE, resources=Resources("2", "4G"),
             command="synth", help="procedural faces (identity folders) and detection scenes (label.txt)"),
        Step("pack", "facepipe.data.pack:PackConfig", "facepipe.data.pack:pack",
             inputs=(Port("src", "images", "faces", "SRC", "identity folders or a .lst"),),
             output="records", image=DATA_IMAGE, resources=Resources("4", "8G", disk="100Gi"), command="pack",
             help="identity folders or a .lst -> MXNet RecordIO (.rec/.idx/.lst/property)",
             headline=(("images_packed", "images"), ("identities_packed", "identities"))),
        Step("train_detection", "facepipe.detection.config:DetectionTrainConfig",
             "facepipe.detection.train:train_detection",
             inputs=(Port("data_dir", "images", "detection", "DATA_PATH", "label.txt trees (train/, val/)"),),
             output="detector", output_kind="model", resources=Resources("8", "32G", 1, "100Gi", "8Gi"),
             registered_model="facepipe-detector", command="train-detection",
             seed_script="run_face_detection_train.sh", help="train a RetinaFace detector",
             headline=(("train.final_loss", "loss"), ("val.ap50", "val AP50"), ("train.images_per_s", "images/s"))),
        Step("train_recognition", "facepipe.recognition.config:RecognitionTrainConfig",
             "facepipe.recognition.train:train_recognition",
             inputs=(Port("data_dir", "records", metavar="DATA_PATH", help="a packed RecordIO folder"),),
             output="recognizer", output_kind="model", resources=Resources("8", "32G", 1, "50Gi", "8Gi"),
             registered_model="facepipe-recognizer", command="train-recognition",
             seed_script="run_face_recognition_train.sh", help="train an ArcFace-family recognizer",
             headline=(("train.loss", "loss"), ("train.accuracy", "train acc"), ("*.accuracy", ""),
                       ("train.samples_per_s", "samples/s"))),
        Step("build_gallery", "facepipe.gallery.build:GalleryConfig", "facepipe.gallery.build:build_gallery",
             inputs=(Port("data_dir", "images", "faces", "DATA_PATH", "identity folders to enrol"),
                     _DETECTOR, _RECOGNIZER),
             output="gallery", resources=Resources("4", "16G", 1, "100Gi"), registered_model="facepipe-recognize",
             command="build-gallery",
             seed_script="run_generate_data_base.sh", help="enrol identity folders into a gallery",
             headline=(("identities", "identities"), ("enrolled_images", "images"))),
        Step("evaluate", "facepipe.evaluation.pipeline_eval:EvaluateConfig",
             "facepipe.evaluation.pipeline_eval:evaluate_pipeline",
             inputs=(_DATA, _DETECTOR, _RECOGNIZER, _GALLERY), output="evaluation", output_kind="artifact",
             resources=Resources("4", "16G", disk="100Gi"), help="score detector, recognizer and gallery on held-out data",
             headline=(("verification.accuracy", "verification acc"), ("identification.rank1", "rank-1"),
                       ("detection.ap50", "AP50"))),
        Step("recognize", "facepipe.gallery.recognize:RecognizeConfig", "facepipe.gallery.recognize:recognize",
             inputs=(Port("data_dir", "images", metavar="DATA_PATH", help="an image or a folder of images"),
                     _GALLERY, _DETECTOR, _RECOGNIZER),
             output="results", output_kind="artifact", resources=Resources("4", "16G"), command="recognize",
             seed_script="run_face_recognition.sh", in_pipeline=False,
             help="detect, align, embed and match every face against a gallery"),
    ]
}

PIPELINE_STEPS = [s.name for s in STEPS.values() if s.in_pipeline]
