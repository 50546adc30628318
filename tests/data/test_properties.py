"""Property tests: whatever bytes the RecordIO, label.txt, .lst and pairs readers get, they return or
raise the project's own error (a FacepipeError naming the file), never anything else."""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facepipe.data.insightface import FaceRecordSet, InsightFaceWriter, read_lst, write_property
from facepipe.data.labels import read_labels
from facepipe.data.recordio import iter_records, read_idx
from facepipe.errors import FacepipeError
from facepipe.evaluation.pairs import read_insightface_bin, read_lfw_pairs

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_our_error(fn, *args) -> None:
    try:
        fn(*args)
    except FacepipeError:
        pass


def only_our_error_on_file(reader, name: str, data: bytes) -> None:
    """`reader(path)` on a file `name` holding `data` raises nothing but our own error."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        only_our_error(reader, path)


def _valid_set() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        with InsightFaceWriter(d) as w:
            for label, n in enumerate((2, 1, 3)):
                for i in range(n):
                    w.add(cv2.imencode(".jpg", np.full((16, 16, 3), 40 * label + i, np.uint8))[1].tobytes(), label)
        write_property(Path(d) / "property", 3, 16, 16)
        return {name: (Path(d) / name).read_bytes() for name in ("train.rec", "train.idx", "property")}


VALID = _valid_set()


def _open_and_read_all(folder: Path) -> None:
    records = FaceRecordSet(folder)
    for i in range(len(records)):
        records.decode(i)
    records.close()
    for _ in iter_records(folder / "train.rec"):
        pass


@FAST
@given(edits=st.lists(st.tuples(st.sampled_from(sorted(VALID)), st.integers(0, 10**6), st.integers(0, 255)),
                      max_size=6),
       cut=st.one_of(st.none(), st.tuples(st.sampled_from(sorted(VALID)), st.integers(0, 10**6))))
def test_recordio_set_with_any_byte_edits_or_truncation(edits, cut):
    files = {k: bytearray(v) for k, v in VALID.items()}
    for name, pos, value in edits:
        files[name][pos % len(files[name])] = value
    if cut is not None:
        name, at = cut
        files[name] = files[name][: at % (len(files[name]) + 1)]
    with tempfile.TemporaryDirectory() as d:
        for name, data in files.items():
            (Path(d) / name).write_bytes(bytes(data))
        only_our_error(_open_and_read_all, Path(d))


@FAST
@given(rec=st.binary(max_size=400), idx=st.text(alphabet="0123456789\t\n -x", max_size=80))
def test_recordio_arbitrary_rec_and_idx_bytes(rec, idx):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "train.rec").write_bytes(rec)
        (Path(d) / "train.idx").write_text(idx)
        only_our_error(_open_and_read_all, Path(d))
        only_our_error(read_idx, Path(d) / "train.idx", len(rec))


LABEL_TOKENS = st.sampled_from(["#", "# a.jpg", "# ", "1", "-1", "0.0", "1.0", "2.5", "1e999", "nan", "inf", "-5",
                                "x", " ", "\t", "\n", "\r\n", "\ufeff", "\xff"])


@FAST
@given(parts=st.lists(LABEL_TOKENS, max_size=60), raw=st.binary(max_size=40))
def test_label_txt_any_text(parts, raw):
    only_our_error_on_file(read_labels, "label.txt", " ".join(parts).encode("utf-8", "surrogatepass") + raw)


LST_TOKENS = st.sampled_from(["0", "1", "2", "-1", "3.5", "nan", "a/b.jpg", "x.png", "", "\t", " ", "\n", "1e400"])


@FAST
@given(parts=st.lists(LST_TOKENS, max_size=40), raw=st.binary(max_size=30))
def test_lst_any_text(parts, raw):
    only_our_error_on_file(read_lst, "train.lst", "".join(parts).encode() + raw)


PAIR_TOKENS = st.sampled_from(["10\t300", "2 3", "Abel_Pacheco", "1", "4", "-2", "x", "\t", " ", "\n", "99999999999"])


@FAST
@given(parts=st.lists(PAIR_TOKENS, max_size=40), raw=st.binary(max_size=30))
def test_lfw_pairs_any_text(parts, raw):
    only_our_error_on_file(read_lfw_pairs, "pairs.txt", "".join(parts).encode() + raw)


@FAST
@given(raw=st.binary(max_size=200))
def test_insightface_bin_any_bytes(raw):
    import pickle

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "lfw.bin"
        path.write_bytes(raw)
        only_our_error(read_insightface_bin, path)
        # and well-formed pickles of the wrong shape
        for body in ((b"a", [True]), ([b"a"], [1, 2]), {"x": 1}, ([1, 2], [True]), None):
            path.write_bytes(pickle.dumps(body))
            only_our_error(read_insightface_bin, path)
