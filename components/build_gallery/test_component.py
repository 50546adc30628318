"""The build_gallery component: the step function on a temp folder, and the component through kfp.local."""

from __future__ import annotations

import json

from kfp.dsl import Dataset, Model

from components.conftest import run_component, tiny_config, tiny_values


def enrolled(gallery_dir) -> tuple[list[str], int]:
    """(identity names, images per identity at most) of a gallery, read back as `recognize` loads it."""
    from collections import Counter

    from facepipe.gallery.store import Gallery

    gallery = Gallery.load(gallery_dir)
    return sorted(gallery.identities), max(Counter(gallery.image_identity.tolist()).values())


def test_step_function_enrols_every_identity(tiny_data, tiny_gallery_built):
    out, report = tiny_gallery_built  # build_gallery(tiny config, data/faces, detector, recognizer, temp folder)
    names, per_identity = enrolled(out)
    assert names == sorted(p.name for p in (tiny_data / "faces").iterdir())
    assert per_identity == tiny_config("build_gallery").max_images_per_identity
    assert report["identities"] == len(names)


def test_component_through_kfp_local(kfp_local, tiny_data, tiny_models):
    from components.build_gallery.component import build_gallery

    detector, recognizer = tiny_models
    task = run_component(kfp_local, build_gallery, {"images": (Dataset, tiny_data), "detector": (Model, detector),
                                                    "recognizer": (Model, recognizer)},
                         **tiny_values("build_gallery"))
    names, _ = enrolled(task / "gallery")
    assert names == sorted(p.name for p in (tiny_data / "faces").iterdir())
    assert json.loads((task / "metrics").read_text())["identities"] == tiny_config("synth").identities
