"""`Recognizer`: the trained recognizer as the gallery and evaluation use it (model.pt -> embeddings)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facepipe.errors import DataError


class Recognizer:
    """`Recognizer.load("model.pt").embed(faces)` -> (N, D) float32, L2-normalised.

    `faces`: uint8 BGR `(N, S, S, 3)`, aligned, S = `.input_size`; by default each face and its
    mirror image are embedded and summed before normalising (the LFW-protocol "flip" trick).
    """

    def __init__(self, backbone, config: dict, input_size: int, embedding_size: int, digest: str,
                 device: str = "cpu"):
        self.backbone, self.config = backbone, config
        self.input_size, self.embedding_size, self.digest = input_size, embedding_size, digest
        self.device = device
        self.center_crop = float(config.get("center_crop", 1.0))

    @classmethod
    def load(cls, path, device: str = "cpu") -> "Recognizer":
        import torch

        from facepipe.manifest import sha256_file
        from facepipe.recognition.backbones import build_backbone
        from facepipe.training.checkpoint import load_torch_file

        path = Path(path)
        if not path.is_file():
            raise DataError("recognizer model not found", path=path)
        blob = load_torch_file(path, "recognizer model.pt", device)
        if blob.get("kind") != "recognizer":
            kind = blob.get("kind")
            raise DataError(f"expected a recognizer model.pt, found kind {kind!r}", path=path)
        cfg = blob["config"]
        backbone = build_backbone(cfg["backbone"], blob["input_size"], blob["embedding_size"],
                                  cfg.get("width", 1.0))
        backbone.load_state_dict(blob["state_dict"])
        backbone.to(device).eval()
        return cls(backbone, cfg, int(blob["input_size"]), int(blob["embedding_size"]), sha256_file(path), device)

    def embed(self, faces: np.ndarray, flip: bool = True, batch_size: int = 64, norms: bool = False):
        """(N, D) embeddings; with `norms`, `(embeddings, norms before normalising (N,))`."""
        import torch

        from facepipe.recognition.engine import embed_faces

        faces = np.asarray(faces)
        s = self.input_size
        if faces.ndim == 3:
            faces = faces[None]
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (s, s, 3):
            raise ValueError(f"faces must be uint8 (N, {s}, {s}, 3) BGR; got {faces.dtype} {faces.shape}")
        if len(faces) == 0:
            empty = np.zeros((0, self.embedding_size), np.float32)
            return (empty, np.zeros(0, np.float32)) if norms else empty
        return embed_faces(self.backbone, faces, torch.device(self.device), batch_size, flip, norms=norms)
