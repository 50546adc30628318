"""`facepipe serve` end to end on a real uvicorn: names, tokens, gallery edits on disk, bad bodies, concurrency."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from facepipe.errors import ConfigError
from facepipe.serving.app import check_bind

from .conftest import TOKEN


def photos(people, name):
    return sorted((people["root"] / name).iterdir())


def post(server, path, data=None, **kw):
    return requests.post(server.url + path, data=data, timeout=60, **kw)


def test_an_enrolled_photo_is_named_and_the_answer_has_the_documented_shape(serve, people):
    server = serve()
    name = people["enrolled"][1]
    r = post(server, "/v1/recognize?top_k=3", photos(people, name)[0].read_bytes(),
             headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    (face,) = body["faces"]
    assert face["identity"] == name and face["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert [c["identity"] for c in face["candidates"]][0] == name and len(face["candidates"]) == 3
    assert set(face) == {"box", "score", "landmarks", "identity", "similarity", "candidates"}
    assert set(body["model"]) == {"detector", "recognizer", "gallery"} and body["model"]["recognizer"]
    # the same photo as a multipart upload: the same answer
    with open(photos(people, name)[0], "rb") as f:
        assert post(server, "/v1/recognize?top_k=3", files={"image": ("a.jpg", f, "image/jpeg")}).json() == body
    listing = requests.get(server.url + "/v1/gallery", timeout=30).json()
    assert listing["identities"] == people["enrolled"] and listing["size"] == 4 and listing["threshold"] is not None
    assert requests.get(server.url + "/healthz", timeout=30).json()["status"] == "ok"


def test_a_stranger_is_unknown_at_a_strict_threshold(serve, people):
    server = serve()
    r = post(server, "/v1/recognize?threshold=0.999", photos(people, people["stranger"])[0].read_bytes())
    assert r.status_code == 200 and r.json()["faces"][0]["identity"] is None


def test_gallery_changes_need_the_right_token(serve, people):
    server = serve()
    image = photos(people, people["newcomer"])[0].read_bytes()
    path = f"/v1/gallery/identities/{people['newcomer']}"
    assert post(server, path, image).status_code == 401
    assert post(server, path, image, headers={"authorization": "Bearer wrong"}).status_code == 403
    assert requests.delete(server.url + path, timeout=30).status_code == 401
    assert requests.delete(server.url + path, headers={"authorization": "Bearer wrong"}, timeout=30).status_code == 403
    r = post(server, path, image, headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    assert TOKEN not in r.text and r.json()["enrolled_images"] == 1


def test_without_a_token_changes_are_refused_and_only_loopback_is_allowed(serve, people):
    server = serve(token=None)
    r = post(server, f"/v1/gallery/identities/{people['newcomer']}", photos(people, people["newcomer"])[0].read_bytes(),
             headers={"authorization": "Bearer anything"})
    assert r.status_code == 403 and "no token configured" in r.json()["error"]
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0"):
        check_bind("0.0.0.0", None)
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "a token")


def test_recognize_can_require_the_token(serve, people):
    server = serve(token_for_recognize=True)
    image = photos(people, people["enrolled"][0])[0].read_bytes()
    assert post(server, "/v1/recognize", image).status_code == 401
    assert requests.get(server.url + "/v1/gallery", timeout=30).status_code == 401
    assert post(server, "/v1/recognize", image, headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_enrolled_then_removed_person_is_named_then_not_and_gone_from_disk(serve, people, gallery_dir):
    server = serve()
    auth = {"authorization": f"Bearer {TOKEN}"}
    name = people["newcomer"]
    first, second = photos(people, name)[:2]
    with open(first, "rb") as a, open(second, "rb") as b:
        r = post(server, f"/v1/gallery/identities/{name}", headers=auth,
                 files=[("images", ("1.jpg", a, "image/jpeg")), ("images", ("2.jpg", b, "image/jpeg"))])
    assert r.status_code == 200 and r.json()["enrolled_images"] == 2, r.text
    assert post(server, f"/v1/gallery/identities/{name}", first.read_bytes(), headers=auth).status_code == 409
    assert post(server, "/v1/recognize", first.read_bytes()).json()["faces"][0]["identity"] == name
    before = np.load(gallery_dir / "image_embeddings.npy")
    r = requests.delete(f"{server.url}/v1/gallery/identities/{name}", headers=auth, timeout=60)
    assert r.status_code == 200 and r.json()["versions_still_holding"] == [], r.text
    answer = post(server, "/v1/recognize?top_k=10", first.read_bytes()).json()
    assert answer["faces"][0]["identity"] != name
    assert name not in [c["identity"] for c in answer["faces"][0]["candidates"]]
    after = np.load(gallery_dir / "image_embeddings.npy")
    assert len(after) == len(before) - 2
    assert name not in json.loads((gallery_dir / "identities.json").read_text())
    assert name not in {r["identity"] for r in json.loads((gallery_dir / "images.json").read_text())}
    # no row of any stored array is one of the removed person's embeddings
    removed = [row for row in before if not any(np.allclose(row, kept) for kept in after)]
    assert len(removed) == 2
    for npy in gallery_dir.glob("*.npy"):
        rows = np.load(npy)
        if rows.ndim == 2:
            assert not any(np.allclose(row, gone, atol=1e-3) for row in rows for gone in removed), npy
    assert requests.delete(f"{server.url}/v1/gallery/identities/{name}", headers=auth, timeout=30).status_code == 404


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def test_bad_bodies_get_4xx_json_and_the_worker_lives_on(serve, people, tmp_path):
    server = serve(max_body=1 << 20)
    good = photos(people, people["enrolled"][0])[0].read_bytes()
    cases = {
        "empty": b"", "text": b"hello, this is not an image\n" * 10, "truncated jpeg": good[:200],
        "png header only": b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "too large": b"\xff\xd8\xff" + b"\0" * (3 << 20),
        "100000 x 100000 png": png_declaring(100_000, 100_000),
    }
    for what, body in cases.items():
        r = post(server, "/v1/recognize", body)
        assert 400 <= r.status_code < 500, (what, r.status_code)
        assert "error" in r.json(), what
    assert post(server, "/v1/recognize", png_declaring(100_000, 100_000)).status_code == 413
    assert post(server, "/v1/recognize?top_k=0", good).status_code == 422
    r = post(server, "/v1/recognize", b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
    assert 400 <= r.status_code < 500
    assert post(server, "/v1/recognize", good).status_code == 200


def test_a_photo_without_a_face_is_422(serve, people, untrained_detector):
    from facepipe.gallery.recognize import RecognizeConfig

    # An untrained detector's scores stay near 0.5: at 0.99 it finds no face in any photo.
    server = serve(detector=untrained_detector, cfg=RecognizeConfig(score_threshold=0.99))
    r = post(server, "/v1/recognize", photos(people, people["enrolled"][0])[0].read_bytes())
    assert r.status_code == 422 and r.json()["faces"] == [] and "no face" in r.json()["error"]
    assert r.json()["model"]["detector"]


def test_a_hundred_concurrent_requests_are_all_answered_in_batches(serve, people):
    server = serve(max_batch=16, wait_ms=20)
    images = [p.read_bytes() for name in people["enrolled"] for p in photos(people, name)]
    expected = [name for name in people["enrolled"] for _ in photos(people, name)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: post(server, "/v1/recognize", images[i % len(images)]), range(100)))
    assert [r.status_code for r in answers] == [200] * 100
    assert [r.json()["faces"][0]["identity"] for r in answers] == [expected[i % len(images)] for i in range(100)]
    assert server.service is not None
    batches = requests.get(server.url + "/healthz", timeout=30).json()["batches"]
    assert batches < 100  # some requests shared a batch
