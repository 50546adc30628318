"""facepipe models as MLflow pyfunc models: the detector, the recognizer, and the whole online recognizer.

`save_model(kind, files, path)` writes an MLflow model folder (MLmodel, signature, input example,
pinned pip requirements, the facepipe package as code) that `mlflow.pyfunc.load_model` and
`mlflow models serve` run. `facepipe-recognize` (detector + recognizer + gallery) answers with
`OnlineRecognizer.answer`, the same JSON as `facepipe serve`'s POST /v1/recognize.
"""

from __future__ import annotations

import base64
import importlib.metadata
from pathlib import Path

import mlflow.pyfunc
import numpy as np

# What a served model imports (the facepipe package itself travels as code).
REQUIREMENTS = ("mlflow", "numpy", "pandas", "torch", "opencv-python-headless", "faiss-cpu", "pyyaml")


def pinned_requirements() -> list[str]:
    """`dist==version` for each requirement, as installed here."""
    pins = []
    for dist in REQUIREMENTS:
        try:
            pins.append(f"{dist}=={importlib.metadata.version(dist).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(dist)
    return pins


class DetectorModel(mlflow.pyfunc.PythonModel):
    """One BGR uint8 image (H, W, 3) -> faces (K, 15): box, score, 5 landmarks (`Detector.detect`)."""

    def load_context(self, context):
        from facepipe.detection.infer import Detector

        self.detector = Detector.load(context.artifacts["model"])

    def predict(self, context, model_input, params=None):
        return self.detector.detect(np.asarray(model_input, np.uint8))


class RecognizerModel(mlflow.pyfunc.PythonModel):
    """Aligned BGR uint8 faces (N, S, S, 3) -> L2-normalised embeddings (N, D) (`Recognizer.embed`)."""

    def load_context(self, context):
        from facepipe.recognition.embed import Recognizer

        self.recognizer = Recognizer.load(context.artifacts["model"])

    def predict(self, context, model_input, params=None):
        return self.recognizer.embed(np.asarray(model_input, np.uint8))


class RecognizeModel(mlflow.pyfunc.PythonModel):
    """A table with an `image` column (JPEG/PNG bytes) -> one `facepipe serve` answer per row
    (`{"faces", "model"}`, or `{"error", "status"}` for a row that is not an image)."""

    def load_context(self, context):
        from facepipe.serving.online import OnlineRecognizer

        art = context.artifacts
        self.service = OnlineRecognizer(art["gallery"], art.get("detector"), art["recognizer"])

    def predict(self, context, model_input, params=None):
        from facepipe.serving.online import RequestError, decode_image

        params = params or {}
        top_k = int(params["top_k"]) if params.get("top_k") else None
        threshold = float(params["threshold"]) if params.get("threshold") is not None else None
        rows = model_input["image"] if hasattr(model_input, "columns") else model_input
        answers: list[dict | None] = []
        good = []
        for data in rows:
            try:
                image = decode_image(base64.b64decode(data) if isinstance(data, str) else bytes(data))
            except RequestError as exc:
                answers.append({"error": str(exc), "status": exc.status})
                continue
            answers.append(None)
            good.append((len(answers) - 1, (image, top_k, threshold)))
        for (i, _), answer in zip(good, self.service.answer([r for _, r in good]) if good else []):
            answers[i] = answer
        return answers


def _example_image() -> bytes:
    import cv2

    yy, xx = np.mgrid[0:96, 0:96]
    image = np.stack([(xx * 2) % 256, (yy * 2) % 256, np.full_like(xx, 128)], -1).astype(np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def save_model(kind: str, files: dict[str, str], path) -> Path:
    """Write the MLflow model of a step output: kind `detector` / `recognizer` (files: model) or
    `gallery` (files: gallery, recognizer, optional detector) -> the `facepipe-recognize` model."""
    import pandas as pd
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    import facepipe

    files = {k: str(v) for k, v in files.items() if v}
    params = None
    if kind == "detector":
        model = DetectorModel()
        example = np.zeros((64, 64, 3), np.uint8)
        signature = ModelSignature(Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, 3))]),
                                   Schema([TensorSpec(np.dtype(np.float32), (-1, 15))]))
    elif kind == "recognizer":
        blob = torch.load(files["model"], map_location="cpu", weights_only=True)
        size = blob["input_size"]
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        model = RecognizerModel()
        example = np.zeros((1, size, size, 3), np.uint8)
        signature = ModelSignature(Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3))]),
                                   Schema([TensorSpec(np.dtype(np.float32), (-1, int(blob["embedding_size"])))]))
    elif kind == "gallery":
        model = RecognizeModel()
        example = pd.DataFrame({"image": [_example_image()]})
        params = ParamSchema([ParamSpec("top_k", "long", 5)])
        signature = ModelSignature(Schema([ColSpec("binary", "image")]), params=params)
    else:
        raise ValueError(f"no MLflow model for step output {kind!r} (expected detector, recognizer or gallery)")
    mlflow.pyfunc.save_model(str(path), python_model=model, artifacts=files, signature=signature,
                             input_example=example, pip_requirements=pinned_requirements(),
                             code_paths=[str(Path(facepipe.__file__).parent)])
    return Path(path)
