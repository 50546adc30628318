"""Byte compatibility with real MXNet 1.9.1 (its own venv, run as a subprocess).

One MXNet run per test module: it reads what facepipe wrote (MXIndexedRecordIO, unpack,
unpack_img, the InsightFace header as arcface_torch reads it) and writes the same records itself
(pack, pack_img) for facepipe to read back.
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import cv2
import numpy as np
import pytest

from facepipe.data.insightface import FaceRecordSet
from facepipe.data.pack import PackConfig, pack
from facepipe.data.recordio import (MAGIC_BYTES, IndexedRecordReader, RecordWriter, decode_image, encode_image,
                                    iter_records, pack_record, unpack_record)
from tests.data.test_pack import make_tree

pytestmark = pytest.mark.mxnet

M = MAGIC_BYTES
# (label, payload, id, id2): scalar and array labels, and payloads holding the magic where
# dmlc must split the record (4-byte aligned) and where it must not (unaligned).
RECORDS = [
    (0.0, b"", 0, 0),
    (3.0, b"abc", 7, 1),
    ([1.0, 2.5], b"abcdefgh", 8, 0),
    (5.0, M, 9, 0),  # after the 24-byte header: aligned
    (6.0, b"xyzw" + M + b"tail!", 10, 0),
    (7.0, b"xy" + M + b"odd", 11, 0),  # unaligned: one part
    ([4.0, 5.0, 6.0], M + M + b"12", 12, 0),  # label array is 12 bytes: header+labels = 36, aligned
    (2.0, bytes(range(256)) * 4 + M, 13, 2**40),
]

MX_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import numpy as np
    import mxnet as mx
    from mxnet import recordio

    fp, mxd = sys.argv[1], sys.argv[2]
    spec = json.load(open(fp + "/spec.json"))
    out = {}

    # 1. read facepipe's generic records
    r = recordio.MXIndexedRecordIO(fp + "/mixed.idx", fp + "/mixed.rec", "r")
    got = []
    for key in sorted(r.keys):
        h, s = recordio.unpack(r.read_idx(key))
        label = h.label.tolist() if h.flag > 0 else float(h.label)
        got.append([key, h.flag, label, h.id, h.id2, s.hex()])
    out["mixed"] = got
    # sequential read without the index, as MXRecordIO does
    seq = recordio.MXRecordIO(fp + "/mixed.rec", "r")
    n = 0
    while seq.read() is not None:
        n += 1
    out["mixed_sequential"] = n

    # 2. read facepipe's images with unpack_img
    r = recordio.MXIndexedRecordIO(fp + "/img.idx", fp + "/img.rec", "r")
    pixels = []
    labels = []
    for key in sorted(r.keys):
        h, img = recordio.unpack_img(r.read_idx(key))
        labels.append(float(h.label))
        pixels.append(img)
    np.save(mxd + "/fp_pixels.npy", np.stack(pixels))
    out["img_labels"] = labels

    # 3. a packed identity tree, read as arcface_torch's MXFaceDataset does
    r = recordio.MXIndexedRecordIO(fp + "/packed/train.idx", fp + "/packed/train.rec", "r")
    h0, s0 = recordio.unpack(r.read_idx(0))
    first_id, end_id = int(h0.label[0]), int(h0.label[1])
    ids = []
    for key in range(first_id, end_id):
        h, _ = recordio.unpack(r.read_idx(key))
        ids.append([int(h.label[0]), int(h.label[1])])
    img_labels = []
    for key in range(1, first_id):
        h, img = recordio.unpack_img(r.read_idx(key))
        assert img.shape == (32, 32, 3), img.shape
        img_labels.append(float(h.label))
    out["packed"] = {"flag": h0.flag, "header": h0.label.tolist(), "payload": len(s0),
                     "identities": ids, "labels": img_labels}

    # 4. MXNet writes the same records and images for facepipe to read
    w = recordio.MXIndexedRecordIO(mxd + "/mixed.idx", mxd + "/mixed.rec", "w")
    for key, (label, payload, rid, rid2) in enumerate(spec["records"]):
        w.write_idx(key, recordio.pack(recordio.IRHeader(0, label, rid, rid2), bytes.fromhex(payload)))
    w.close()
    images = np.load(fp + "/images.npy")
    w = recordio.MXIndexedRecordIO(mxd + "/img.idx", mxd + "/img.rec", "w")
    mx_pixels = []
    for key, img in enumerate(images):
        packed = recordio.pack_img(recordio.IRHeader(0, float(key % 3), key, 0), img, quality=95)
        w.write_idx(key, packed)
        mx_pixels.append(recordio.unpack_img(packed)[1])
    w.close()
    np.save(mxd + "/mx_pixels.npy", np.stack(mx_pixels))
    print(json.dumps(out))
""")


def images(n=5):
    rng = np.random.default_rng(3)
    base = rng.integers(0, 255, (n, 1, 1, 3), dtype=np.uint8)
    out = np.repeat(np.repeat(base, 24, 1), 20, 2).copy()
    for i in range(n):
        cv2.putText(out[i], str(i), (3, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
    return out


@pytest.fixture(scope="module")
def mx_run(tmp_path_factory, mxnet_python):
    root = tmp_path_factory.mktemp("mxcompat")
    fp, mxd = root / "fp", root / "mx"
    fp.mkdir()
    mxd.mkdir()
    with RecordWriter(fp / "mixed.rec", fp / "mixed.idx") as w:
        for key, (label, payload, rid, rid2) in enumerate(RECORDS):
            w.write(pack_record(label, payload, id=rid, id2=rid2), key=key)
    imgs = images()
    np.save(fp / "images.npy", imgs)
    with RecordWriter(fp / "img.rec", fp / "img.idx") as w:
        for key, img in enumerate(imgs):
            w.write(pack_record(float(key % 3), encode_image(img, 95), id=key), key=key)
    tree = make_tree(root / "tree", {"amy": 2, "bo": 3, "cy": 1})
    pack(PackConfig(size=32, workers=1), tree, fp / "packed", progress=False)
    spec = {"records": [[label, payload.hex(), rid, rid2] for label, payload, rid, rid2 in RECORDS]}
    (fp / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([str(mxnet_python), "-c", MX_SCRIPT, str(fp), str(mxd)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return fp, mxd, json.loads(proc.stdout.strip().splitlines()[-1])


def test_mxnet_reads_facepipe_records(mx_run):
    _, _, out = mx_run
    assert out["mixed_sequential"] == len(RECORDS)
    for (key, flag, label, rid, rid2, payload), (exp_label, exp_payload, exp_id, exp_id2) in zip(out["mixed"], RECORDS):
        assert flag == (len(exp_label) if isinstance(exp_label, list) else 0)
        assert label == exp_label and (rid, rid2) == (exp_id, exp_id2)
        assert bytes.fromhex(payload) == exp_payload, key


def test_mxnet_unpack_img_gives_facepipe_pixels_and_labels(mx_run):
    fp, mxd, out = mx_run
    assert out["img_labels"] == [float(k % 3) for k in range(5)]
    ours = np.stack([decode_image(unpack_record(IndexedRecordReader(fp / "img.rec").read(k))[1]) for k in range(5)])
    np.testing.assert_array_equal(np.load(mxd / "fp_pixels.npy"), ours)


def test_facepipe_reads_mxnet_records_and_writes_the_same_bytes(mx_run):
    fp, mxd, _ = mx_run
    reader = IndexedRecordReader(mxd / "mixed.rec", mxd / "mixed.idx")
    for key, (label, payload, rid, rid2) in enumerate(RECORDS):
        header, body = unpack_record(reader.read(key))
        assert body == payload and (header.id, header.id2) == (rid, rid2)
        assert (header.label.tolist() if header.flag else header.label) == label
    assert [p for _, p in iter_records(mxd / "mixed.rec")] == [reader.read(k) for k in range(len(RECORDS))]
    # the strongest check: identical files, magic escapes and index included
    assert (fp / "mixed.rec").read_bytes() == (mxd / "mixed.rec").read_bytes()
    assert (fp / "mixed.idx").read_bytes() == (mxd / "mixed.idx").read_bytes()


def test_facepipe_reads_mxnet_pack_img(mx_run):
    _, mxd, _ = mx_run
    mx_pixels = np.load(mxd / "mx_pixels.npy")
    reader = IndexedRecordReader(mxd / "img.rec")
    for key in range(len(mx_pixels)):
        header, payload = unpack_record(reader.read(key))
        assert header.label == float(key % 3) and header.id == key
        np.testing.assert_array_equal(decode_image(payload), mx_pixels[key])


def test_packed_tree_has_insightface_layout_in_mxnet(mx_run):
    fp, _, out = mx_run
    packed = out["packed"]
    # 6 images of 3 identities: record 0 = [N+1, N+1+K], identities [start, end) in image keys
    assert (packed["flag"], packed["header"], packed["payload"]) == (2, [7.0, 10.0], 0)
    assert packed["identities"] == [[1, 3], [3, 6], [6, 7]]
    assert packed["labels"] == [0.0, 0.0, 1.0, 1.0, 1.0, 2.0]
    assert FaceRecordSet(fp / "packed").labels.tolist() == [int(x) for x in packed["labels"]]


def test_face_record_set_reads_a_plain_mxnet_rec(mx_run):
    """An im2rec-style .rec (every record an image, no InsightFace header) written by MXNet."""
    _, mxd, _ = mx_run
    rs = FaceRecordSet(mxd, prefix="img")
    assert rs.layout == "plain" and rs.num_classes == 3 and rs.image_size == (24, 20)
    assert rs.labels.tolist() == [0, 0, 1, 1, 2] and rs.identity_ranges.tolist() == [[0, 2], [2, 4], [4, 5]]
    mx_pixels = np.load(mxd / "mx_pixels.npy")
    for i in range(len(rs)):
        image, label = rs.decode(i)
        assert label == rs.key(i) % 3
        np.testing.assert_array_equal(image, mx_pixels[rs.key(i)])
