"""InsightFace layout: writer, FaceRecordSet, property and .lst files, consistency errors."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facepipe.data.insightface import (FaceRecordSet, InsightFaceWriter, read_lst, read_property,
                                       write_property)
from facepipe.data.recordio import (IndexedRecordReader, RecordWriter, encode_image, pack_record, unpack_record,
                                    write_idx_by_scan)
from facepipe.errors import DataError


def face(seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = rng.integers(0, 255, 3)
    cv2.circle(img, (size // 2, size // 2), size // 4, [int(v) for v in rng.integers(0, 255, 3)], -1)
    return img


def write_set(folder, per_class=(2, 1, 3), size=32, prefix="train"):
    folder.mkdir(parents=True, exist_ok=True)
    with InsightFaceWriter(folder, prefix) as w:
        for c, n in enumerate(per_class):
            for j in range(n):
                w.add(encode_image(face(c * 10 + j, size)), c)
    write_property(folder / "property", len(per_class), size, size)
    return folder


def test_writer_layout_and_reader(tmp_path):
    d = write_set(tmp_path / "ds")
    reader = IndexedRecordReader(d / "train.rec")
    h0, payload = unpack_record(reader.read(0))
    assert h0.flag == 2 and h0.label.tolist() == [7.0, 10.0] and payload == b""  # N=6, K=3
    assert [unpack_record(reader.read(k))[0].label.tolist() for k in (7, 8, 9)] == [[1, 3], [3, 4], [4, 7]]
    assert unpack_record(reader.read(3))[0].label == 1.0
    rs = FaceRecordSet(d)
    assert (len(rs), rs.num_classes, rs.image_size, rs.layout) == (6, 3, (32, 32), "insightface")
    assert rs.labels.dtype == np.int64 and rs.labels.tolist() == [0, 0, 1, 2, 2, 2]
    assert rs.identity_ranges.tolist() == [[0, 2], [2, 3], [3, 6]]
    jpeg, label = rs.read(3)
    assert jpeg[:2] == b"\xff\xd8" and label == 2
    img, label = rs.decode(2)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and label == 1
    np.testing.assert_array_equal(img, cv2.imdecode(np.frombuffer(rs.read(2)[0], np.uint8), cv2.IMREAD_COLOR))
    assert np.abs(img.astype(int) - face(10).astype(int)).mean() < 10  # JPEG loss, not another face
    clone = pickle.loads(pickle.dumps(rs))
    assert clone.read(5) == rs.read(5)


def test_writer_refuses_classes_out_of_order(tmp_path):
    with InsightFaceWriter(tmp_path, "x") as w:
        w.add(b"j", 0)
        with pytest.raises(ValueError, match="grouped in class order"):
            w.add(b"j", 2)


def test_property_disagreeing_with_labels_names_the_file(tmp_path):
    d = write_set(tmp_path / "ds")
    write_property(d / "property", 5, 32, 32)
    with pytest.raises(DataError, match=r"property, line 1: says 5 classes, but train\.rec holds 3 identities"):
        FaceRecordSet(d)


def test_property_extra_lines_tolerated_and_bad_ones_rejected(tmp_path):
    p = tmp_path / "property"
    p.write_text("85742,112,112\nsome,extra,line\n")
    assert read_property(p) == (85742, 112, 112)
    p.write_text("85742;112;112\n")
    with pytest.raises(DataError, match=r"property, line 1: expected 'num_classes,H,W'"):
        read_property(p)


def test_header_disagreeing_with_records(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    with RecordWriter(d / "train.rec", d / "train.idx") as w:
        w.write(pack_record([4.0, 6.0]), key=0)  # says 3 images, 2 identities
        for k in (1, 2, 3):
            w.write(pack_record(0.0, b"img"), key=k)
        w.write(pack_record([1.0, 3.0]), key=4)
        w.write(pack_record([3.0, 5.0]), key=5)  # runs past the images
    with pytest.raises(DataError, match=r"train\.rec.*identity record 5 \(class 1\) covers images \[3, 5\)"):
        FaceRecordSet(d)


def test_image_label_disagreeing_with_its_identity_record(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    with RecordWriter(d / "train.rec", d / "train.idx") as w:
        w.write(pack_record([3.0, 4.0]), key=0)
        w.write(pack_record(0.0, encode_image(face(0))), key=1)
        w.write(pack_record(1.0, encode_image(face(1))), key=2)  # labelled 1; the only identity is class 0
        w.write(pack_record([1.0, 3.0]), key=3)
    rs = FaceRecordSet(d)
    assert rs.read(0)[1] == 0
    with pytest.raises(DataError, match="image record 2 is labelled 1, but its identity record puts it in class 0"):
        rs.read(1)


def test_plain_im2rec_style_rec_without_header(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    with RecordWriter(d / "val.rec", d / "val.idx") as w:
        for key, label in enumerate([1, 0, 1, 0]):
            w.write(pack_record(float(label), encode_image(face(key)), id=key), key=key)
    rs = FaceRecordSet(d, prefix="val")
    assert rs.layout == "plain" and rs.num_classes == 2 and rs.image_size == (32, 32)
    assert rs.labels.tolist() == [0, 0, 1, 1] and rs.identity_ranges.tolist() == [[0, 2], [2, 4]]
    assert rs.read(2)[1] == 1


def test_lst_both_column_orders(tmp_path):
    a = tmp_path / "insightface.lst"
    a.write_text("1\timages/a/1.jpg\t0\t10\t20\t30\t40\n1\timages/b/1.jpg\t1\n")
    fmt, entries = read_lst(a)
    assert fmt == "insightface" and [(e.path, e.label) for e in entries] == [("images/a/1.jpg", 0), ("images/b/1.jpg", 1)]
    b = tmp_path / "im2rec.lst"
    b.write_text("0\t3.000000\ta/1.jpg\n1\t5.000000\tb/1.jpg\n")
    fmt, entries = read_lst(b)
    assert fmt == "im2rec" and [(e.index, e.label, e.path) for e in entries] == [(0, 3, "a/1.jpg"), (1, 5, "b/1.jpg")]


def test_malformed_lst_line(tmp_path):
    p = tmp_path / "x.lst"
    p.write_text("0\t3\ta/1.jpg\n1\ta/2.jpg\n")
    with pytest.raises(DataError, match=r"x\.lst, line 2: expected 'index<TAB>label<TAB>path'"):
        read_lst(p)
    p.write_text("0\t2.5\ta/1.jpg\n")
    with pytest.raises(DataError, match=r"line 1: label '2.5' is not a non-negative integer"):
        read_lst(p)
    p.write_text("just some text\n")
    with pytest.raises(DataError, match="InsightFace.*im2rec"):
        read_lst(p)


def test_missing_files_named(tmp_path):
    with pytest.raises(DataError, match="no train.rec here"):
        FaceRecordSet(tmp_path)
    d = write_set(tmp_path / "ds")
    (d / "property").unlink()
    (d / "property").mkdir()
    with pytest.raises(DataError, match=r"property: cannot read: Is a directory"):
        FaceRecordSet(d)


def test_lost_idx_is_rebuilt_by_scanning(tmp_path):
    d = write_set(tmp_path / "ds")
    original = (d / "train.idx").read_bytes()
    (d / "train.idx").unlink()
    rs = FaceRecordSet(d)
    assert rs.reader.index_source == "scan" and rs.labels.tolist() == [0, 0, 1, 2, 2, 2]
    assert write_idx_by_scan(d / "train.rec") == 10
    assert (d / "train.idx").read_bytes() == original


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory):
    d = write_set(tmp_path_factory.mktemp("clean") / "ds", per_class=(2, 1, 2), size=16)
    return {name: (d / name).read_bytes() for name in ("train.rec", "train.idx", "property")}


def _open_and_read_everything(d):
    rs = FaceRecordSet(d)
    for i in range(len(rs)):
        rs.decode(i)
    rs.close()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["train.rec", "train.idx"]), edits=st.lists(
    st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4), cut=st.booleans())
def test_fuzz_corrupted_dataset_only_raises_data_error(tmp_path, clean_set, target, edits, cut):
    """Flipped bytes or a cut anywhere in the .rec or .idx: a clear DataError or a dataset that still
    reads (a flipped byte inside a JPEG can still decode), never another exception."""
    d = tmp_path / "ds"
    d.mkdir(exist_ok=True)
    for name, data in clean_set.items():
        (d / name).write_bytes(data)
    data = bytearray(clean_set[target])
    if cut:
        data = data[: edits[0][0] % len(data)]
    else:
        for pos, value in edits:
            data[pos % len(data)] = value
    (d / target).write_bytes(bytes(data))
    try:
        _open_and_read_everything(d)
    except DataError as exc:
        assert "ds/" in str(exc)


def test_undecodable_payload_is_a_data_error(tmp_path):
    from tests.data.test_pack import huge_png_header

    d = tmp_path / "ds"
    d.mkdir()
    with InsightFaceWriter(d) as w:
        w.add(b"not an image", 0)
        w.add(huge_png_header(), 0)
    write_property(d / "property", 1, 112, 112)
    rs = FaceRecordSet(d)
    with pytest.raises(DataError, match=r"train\.rec, byte offset \d+: payload of 12 bytes is not a decodable image"):
        rs.decode(0)
    with pytest.raises(DataError, match="not decodable: .*CV_IO_MAX_IMAGE_PIXELS"):
        rs.decode(1)


def test_writer_refuses_keys_float32_cannot_hold(tmp_path, monkeypatch):
    import facepipe.data.insightface as layout

    monkeypatch.setattr(layout, "MAX_RECORDS", 5)  # the real limit, 2**24 records, is too big to write here
    with InsightFaceWriter(tmp_path, "big") as w:
        w.add(b"a", 0)
        w.add(b"b", 1)
        with pytest.raises(DataError, match=r"big\.rec: too many records: .*float32 labels, exact only below 5"):
            w.add(b"c", 1)


def test_torch_dataloader_workers_read_the_same_images(tmp_path):
    torch = pytest.importorskip("torch")
    d = write_set(tmp_path / "ds", per_class=(3, 2, 3))
    rs = FaceRecordSet(d)
    rs.decode(0)  # the parent has an open handle when the workers fork

    class Faces(torch.utils.data.Dataset):
        def __len__(self):
            return len(rs)

        def __getitem__(self, i):
            image, label = rs.decode(i)
            return torch.from_numpy(image), label

    loader = torch.utils.data.DataLoader(Faces(), batch_size=3, num_workers=2,
                                         multiprocessing_context="fork")
    images, labels = zip(*loader)
    assert torch.cat(labels).tolist() == rs.labels.tolist()
    expected = np.stack([rs.decode(i)[0] for i in range(len(rs))])
    np.testing.assert_array_equal(torch.cat(images).numpy(), expected)
