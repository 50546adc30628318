"""Fixtures for the gallery tier: synthetic identities split into train / gallery / probe folders,
a tiny recognizer trained on the train split (about half a minute on one core), an untrained one and
an untrained detector."""

from __future__ import annotations

from pathlib import Path

import pytest

IDENTITIES, IMAGES = 24, 20
TRAIN_IMAGES = range(0, 16)     # images 1..16 of each identity train the recognizer
GALLERY_IMAGES = range(16, 18)  # 17..18 are enrolled
PROBE_IMAGES = range(18, 20)    # 19..20 are recognised
# Half the default pose/lighting/occlusion: a 30-second recognizer cannot learn more than that.
NUISANCE = 0.5
TINY = dict(backbone="iresnet18", width=0.125, embedding_size=64, input_size=32)


def _link_tree(faces: Path, out: Path, picks, identities=slice(None)) -> Path:
    for identity in sorted(p for p in faces.iterdir() if p.is_dir())[identities]:
        images = sorted(identity.iterdir())
        (out / identity.name).mkdir(parents=True)
        for i in picks:
            (out / identity.name / images[i].name).symlink_to(images[i])
    return out


@pytest.fixture(scope="session")
def gallery_data(tmp_path_factory) -> dict:
    """Folders: train/, gallery/, probes/ (same identities, disjoint images); calibration/ and
    distractors/ (other people, 6 each)."""
    from facepipe.data.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("gallery_data")
    synthesize(SynthConfig(identities=IDENTITIES, images=IMAGES, scenes=0, seed=3, eval_identities=12,
                           pair_folds=2, pairs_per_fold=10, nuisance=NUISANCE), root / "synth")
    faces = root / "synth" / "faces"
    return {
        "synth": root / "synth",
        "train": _link_tree(faces, root / "train", TRAIN_IMAGES),
        "gallery": _link_tree(faces, root / "gallery", GALLERY_IMAGES),
        "probes": _link_tree(faces, root / "probes", PROBE_IMAGES),
        # People never enrolled (nor trained on): half calibrate the unknown threshold, half test it.
        "calibration": _link_tree(root / "synth" / "faces_eval", root / "calibration", range(IMAGES), slice(0, 6)),
        "distractors": _link_tree(root / "synth" / "faces_eval", root / "distractors", range(IMAGES), slice(6, 12)),
    }


@pytest.fixture(scope="session")
def trained_recognizer(gallery_data, tmp_path_factory) -> Path:
    import torch

    from facepipe.config import from_dict
    from facepipe.data.pack import PackConfig, pack
    from facepipe.recognition.config import RecognitionTrainConfig
    from facepipe.recognition.train import train_recognition

    root = tmp_path_factory.mktemp("trained_recognizer")
    pack(PackConfig(size=TINY["input_size"], workers=1), gallery_data["train"], root / "rec")
    cfg = from_dict(RecognitionTrainConfig, dict(TINY, loss="arcface", augment="flip_jitter", epochs=30, batch_size=64, lr=0.1,
                                                 workers=0, checkpoint_every=0, log_every=50))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two shared cores run many times slower here
    try:
        train_recognition(cfg, root / "rec", root / "model")
    finally:
        torch.set_num_threads(threads)
    return root / "model" / "model.pt"


def save_untrained_recognizer(path: Path, seed: int = 0) -> Path:
    """A randomly initialised recognizer in the model.pt format (what training would start from)."""
    import torch

    from facepipe.recognition.backbones import build_backbone

    torch.manual_seed(seed)
    backbone = build_backbone(TINY["backbone"], TINY["input_size"], TINY["embedding_size"], TINY["width"])
    torch.save({"kind": "recognizer", "state_dict": backbone.state_dict(), "config": dict(TINY),
                "num_classes": IDENTITIES, "embedding_size": TINY["embedding_size"],
                "input_size": TINY["input_size"]}, path)
    return path


@pytest.fixture(scope="session")
def untrained_recognizer(tmp_path_factory) -> Path:
    return save_untrained_recognizer(tmp_path_factory.mktemp("untrained") / "model.pt")


@pytest.fixture(scope="session")
def untrained_detector(tmp_path_factory) -> Path:
    """A randomly initialised detector model.pt (finds faces at random)."""
    import torch

    from facepipe.config import to_dict
    from facepipe.detection.config import DetectionTrainConfig
    from facepipe.detection.model import build_model

    torch.manual_seed(0)
    cfg = DetectionTrainConfig()
    path = tmp_path_factory.mktemp("detector") / "model.pt"
    torch.save({"kind": "detector", "state_dict": build_model(cfg).state_dict(), "config": to_dict(cfg)}, path)
    return path
