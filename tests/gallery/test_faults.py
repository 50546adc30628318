"""Issue 15 findings on the gallery steps: a NaN recognizer and unreadable inputs are errors, not results."""

from __future__ import annotations

import torch

from facepipe.cli import main
from tests.gallery.conftest import save_untrained_recognizer
from tests.gallery.test_edges import _people


def test_finding_5_build_gallery_refuses_a_nan_recognizer(gallery_data, tmp_path, capsys):
    model = save_untrained_recognizer(tmp_path / "model.pt")
    blob = torch.load(model, weights_only=True)
    first = next(k for k, v in blob["state_dict"].items() if v.is_floating_point())
    blob["state_dict"][first].fill_(float("nan"))  # what lr=inf trains
    torch.save(blob, model)
    people = _people(gallery_data["gallery"], tmp_path / "people", 2)
    assert main(["build-gallery", str(people), "none", str(model), str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert f"{model}: recognizer model.pt weights are not finite ({first} holds NaN" in err
    assert not (tmp_path / "g").exists()


def test_finding_8_recognize_with_every_input_unreadable_exits_non_zero(gallery_data, untrained_recognizer,
                                                                          tmp_path, capsys):
    people = _people(gallery_data["gallery"], tmp_path / "people", 2)
    assert main(["build-gallery", str(people), "none", str(untrained_recognizer), str(tmp_path / "g")]) == 0
    probes = tmp_path / "probes"
    probes.mkdir()
    for name in ("a.jpg", "b.png"):
        (probes / name).write_bytes(b"not an image")
    capsys.readouterr()
    assert main(["recognize", str(probes), str(tmp_path / "g"), "none", str(untrained_recognizer),
                 "--out", str(tmp_path / "out")]) == 2
    assert f"{probes}: none of the 2 images could be read (first: a.jpg" in capsys.readouterr().err
