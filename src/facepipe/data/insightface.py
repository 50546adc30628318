"""The InsightFace dataset layout (MS1M, Glint360K, WebFace): `.rec/.idx`, `property`, `.lst`.

Layout of `PREFIX.rec` with N images of K identities (class ids 0..K-1):

- record 0: IRHeader label `[N+1, N+1+K]` (flag 2), empty payload;
- records 1..N: the images, JPEG payloads, each labelled with its class id (a float in the header,
  flag 0; some published sets store `[class_id, ...]` arrays, which are read too), grouped by
  identity in class order;
- records N+1..N+K: one per identity, label `[start, end)`: the image keys of that identity.

`property` holds one line `num_classes,H,W` (more lines are tolerated and ignored).

`.lst` files come in two column orders, both tab-separated, told apart by their columns:

- InsightFace (`face2rec2.py`, written by `facepipe pack`): `aligned<TAB>path<TAB>label`, and
  for a face not yet aligned (`aligned` 0) optionally a box `x1 y1 x2 y2` and 5 landmarks as
  `x1..x5 y1..y5` (all x first, as `face_preprocess.parse_lst_line` reads them), tab-separated;
  `facepipe pack` aligns such faces on those landmarks (or crops the box);
- im2rec (`mx.tools.im2rec`): `index<TAB>label[<TAB>label...]<TAB>path`: the path comes last.

Relative paths in a `.lst` are relative to the folder holding the `.lst`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facepipe.data.jpeg import jpeg_complete, jpeg_info
from facepipe.data.recordio import (IndexedRecordReader, RecordWriter, decode_image, frame,
                                    pack_record, unpack_record)
from facepipe.errors import DataError


# ---------------------------------------------------------------------------------------------
# property
# ---------------------------------------------------------------------------------------------

def read_property(path: str | Path) -> tuple[int, int, int]:
    """(num_classes, height, width) from a `property` file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError("property file not found (expected 'num_classes,H,W')", path=path) from None
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror} (expected a 'num_classes,H,W' text file)", path=path) from None
    except UnicodeDecodeError:
        raise DataError("not a text file (expected 'num_classes,H,W')", path=path, line=1) from None
    first = next((ln for ln in lines if ln.strip()), "")
    cols = [c.strip() for c in first.split(",")]
    try:
        values = [int(c) for c in cols]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) <= 0:
        raise DataError(f"expected 'num_classes,H,W' (three positive integers), got {first!r}",
                        path=path, line=1)
    return values[0], values[1], values[2]


def write_property(path: str | Path, num_classes: int, height: int, width: int) -> None:
    Path(path).write_text(f"{num_classes},{height},{width}\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# .lst
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LstEntry:
    path: str       # as written in the file
    label: int      # the first label column
    line: int       # 1-based line number, for error messages
    index: int | None = None  # im2rec's index column
    aligned: bool | None = None  # InsightFace's first column
    bbox: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 in image pixels
    landmarks: tuple[tuple[float, float], ...] | None = None  # 5 (x, y) points in image pixels


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def detect_lst_format(cols: list[str]) -> str | None:
    """'insightface', 'im2rec' or None for one line's columns."""
    if len(cols) >= 3 and cols[0] in ("0", "1") and not _is_number(cols[1]) and _is_number(cols[2]):
        return "insightface"
    if len(cols) >= 3 and all(_is_number(c) for c in cols[:-1]) and not _is_number(cols[-1]):
        return "im2rec"
    if len(cols) >= 3 and cols[0] in ("0", "1") and _is_number(cols[2]):
        return "insightface"  # a purely numeric file name: the aligned flag decides
    if len(cols) >= 3 and all(_is_number(c) for c in cols):
        return "im2rec"
    return None


def _face_geometry(cols: list[str], path: Path, n: int):
    """The optional box (columns 4-7) and landmarks (columns 8-17) of an InsightFace .lst line."""
    extra = [c for c in cols[3:] if c.strip() != ""]
    if not extra:
        return None, None
    try:
        values = [float(c) for c in extra]
    except ValueError:
        raise DataError(f"expected numbers after the label (box x1 y1 x2 y2, then landmarks x1..x5 y1..y5), "
                        f"got {extra!r}", path=path, line=n) from None
    if len(values) not in (4, 14):
        raise DataError(f"expected 4 box values, or 4 box and 10 landmark values after the label, "
                        f"got {len(values)}", path=path, line=n)
    bbox = tuple(values[:4])
    landmarks = tuple(zip(values[4:9], values[9:14])) if len(values) == 14 else None
    return bbox, landmarks


def read_lst(path: str | Path) -> tuple[str, list[LstEntry]]:
    """(format, entries) of a `.lst` file; the format is detected from the first line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("list file not found", path=path) from None
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror} (expected a .lst text file)", path=path) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not a text list: byte {exc.start} is not UTF-8", path=path) from None
    fmt = None
    entries: list[LstEntry] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cols = line.rstrip("\r\n").split("\t")
        this = detect_lst_format(cols)
        if fmt is None:
            fmt = this
            if fmt is None:
                raise DataError(f"expected 'aligned<TAB>path<TAB>label' (InsightFace) or "
                                f"'index<TAB>label<TAB>path' (im2rec), got {line!r}", path=path, line=n)
        if fmt == "insightface":
            if len(cols) < 3 or not _is_number(cols[2]):
                raise DataError(f"expected 'aligned<TAB>path<TAB>label' like line 1, got {line!r}",
                                path=path, line=n)
            label_text, entry_path, index = cols[2], cols[1], None
            bbox, landmarks = _face_geometry(cols, path, n)
        else:
            if len(cols) < 3 or not all(_is_number(c) for c in cols[:-1]):
                raise DataError(f"expected 'index<TAB>label<TAB>path' like line 1, got {line!r}",
                                path=path, line=n)
            label_text, entry_path, index = cols[1], cols[-1], int(float(cols[0]))
            bbox = landmarks = None
        label = float(label_text)
        if not label.is_integer() or label < 0:
            raise DataError(f"label {label_text!r} is not a non-negative integer class id", path=path, line=n)
        if not entry_path:
            raise DataError("empty path", path=path, line=n)
        aligned = (cols[0] == "1") if fmt == "insightface" else None
        entries.append(LstEntry(entry_path, int(label), n, index, aligned, bbox, landmarks))
    if fmt is None:
        raise DataError("empty list file: expected one image per line", path=path)
    return fmt, entries


def lst_line(path: str, label: int) -> str:
    """One line in the InsightFace order `1<TAB>path<TAB>label`."""
    if "\t" in path or "\n" in path:
        raise DataError(f"path {path!r} contains a tab or newline; a .lst cannot hold it")
    return f"1\t{path}\t{int(label)}\n"


def write_lst(path: str | Path, items: list[tuple[str, int]]) -> None:
    """Write (path, label) pairs in the InsightFace order `1<TAB>path<TAB>label`."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for p, label in items:
            f.write(lst_line(p, label))


# ---------------------------------------------------------------------------------------------
# Writing the layout
# ---------------------------------------------------------------------------------------------

# Keys and [start, end) ranges are float32 labels in this layout: exact up to 2**24 only.
MAX_RECORDS = 1 << 24

# Record 0 is written first as a placeholder and rewritten at close, once N and K are known.
# Its framed size never changes: 24-byte header + two float32 labels, no magic possible in them.
_HEADER0_PLACEHOLDER = pack_record([0.0, 0.0], b"", id=0)


class InsightFaceWriter:
    """Write `PREFIX.rec/.idx` in the InsightFace layout; images must arrive in class order.

        with InsightFaceWriter(out_dir, "train") as w:
            w.add(jpeg_bytes, class_id)     # class ids 0, 0, 1, 2, 2, ... (no gaps)
        # close() writes the identity records, rewrites record 0 and writes nothing else
    """

    def __init__(self, out_dir: str | Path, prefix: str = "train"):
        self.out_dir = Path(out_dir)
        self.rec_path = self.out_dir / f"{prefix}.rec"
        self.idx_path = self.out_dir / f"{prefix}.idx"
        self._writer = RecordWriter(self.rec_path, self.idx_path)
        self._writer.write(_HEADER0_PLACEHOLDER, key=0)
        self.num_images = 0
        self._starts: list[int] = []  # first image key of each class

    def add(self, jpeg: bytes, class_id: int) -> int:
        """Append one image of `class_id`; returns its record key."""
        expected_next = len(self._starts)
        current = expected_next - 1
        if class_id == expected_next:
            self._starts.append(self.num_images + 1)
        elif class_id != current:
            raise ValueError(f"images must come grouped in class order: got class {class_id} "
                             f"after class {current}")
        key = self.num_images + 1
        if key + self.num_classes >= MAX_RECORDS:
            raise DataError(f"too many records: the InsightFace layout keeps record keys in float32 "
                            f"labels, exact only below {MAX_RECORDS}; pack in several parts (--prefix)",
                            path=self.rec_path)
        self._writer.write(pack_record(float(class_id), jpeg, id=key), key=key)
        self.num_images += 1
        return key

    @property
    def num_classes(self) -> int:
        return len(self._starts)

    def close(self) -> None:
        if self._writer is None:
            return
        n, k = self.num_images, self.num_classes
        ends = self._starts[1:] + [n + 1]
        for c, (start, end) in enumerate(zip(self._starts, ends)):
            key = n + 1 + c
            self._writer.write(pack_record([float(start), float(end)], b"", id=key), key=key)
        self._writer.close()
        self._writer = None
        header0 = frame(pack_record([float(n + 1), float(n + 1 + k)], b"", id=0))
        with open(self.rec_path, "r+b") as f:
            f.write(header0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------------
# Reading the layout
# ---------------------------------------------------------------------------------------------

_UNVERIFIED_WARNED: set[Path] = set()


def _check_provenance(data_dir: Path) -> bool:
    """True for a set with its manifest (pack writes it last); DataError for one pack left unfinished;
    False, with a warning, for a foreign (MXNet/InsightFace) set, which has no manifest to check."""
    from facepipe.manifest import MANIFEST

    if (data_dir / MANIFEST).is_file():
        return True
    if data_dir.name.endswith(".partial") or any(data_dir.glob("*.tmp")) or (data_dir / "pack_report.json").exists():
        raise DataError(f"no {MANIFEST}: facepipe pack did not finish writing this set; pack it again", path=data_dir)
    if data_dir not in _UNVERIFIED_WARNED:
        _UNVERIFIED_WARNED.add(data_dir)
        print(f"warning: {data_dir} has no {MANIFEST} (not written by facepipe pack): reading it UNVERIFIED",
              file=sys.stderr, flush=True)
    return False


class FaceRecordSet:
    """A face recognition training set in `data_dir`: `PREFIX.rec`, `PREFIX.idx`, `property`.

    Images are numbered 0..len-1 (record key = index + 1 in the InsightFace layout).
    - `num_classes`, `image_size` (H, W), `len(s)`
    - `labels`: np.int64 array, the class id of each image
    - `identity_ranges`: np.int64 array (num_classes, 2): image indices [start, end) of each class
    - `read(i) -> (jpeg_bytes, label)`, `decode(i) -> (BGR uint8 HxWx3, label)`

    A `.rec` without the InsightFace header (plain im2rec output: every record an image) is read
    too; its labels come from the image headers (one pass over the file on open). Without
    `PREFIX.idx` the index is rebuilt in memory by one pass over the .rec (`index_source`).
    Inconsistencies (property vs identity records, header vs index, an image whose label does
    not match its identity range) raise DataError naming the file. Safe to pickle into
    DataLoader workers: each process opens its own handle.
    """

    def __init__(self, data_dir: str | Path, prefix: str = "train"):
        self.data_dir = Path(data_dir)
        self.prefix = prefix
        self.rec_path = self.data_dir / f"{prefix}.rec"
        self.idx_path = self.data_dir / f"{prefix}.idx"
        self.property_path = self.data_dir / "property"
        if not self.rec_path.exists():
            raise DataError(f"no {prefix}.rec here (expected PREFIX.rec, PREFIX.idx, property)",
                            path=self.data_dir)
        self.verified = _check_provenance(self.data_dir)
        self.reader = IndexedRecordReader(self.rec_path, self.idx_path, scan_if_missing=True)
        if 0 not in self.reader:
            raise DataError("the index has no key 0 (expected the InsightFace header record or "
                            "an image)", path=self.idx_path)
        header, payload = unpack_record(self.reader.read(0), self.rec_path, self.reader.offset(0))
        # InsightFace's record 0 is a bare [N+1, N+1+K] label; an im2rec image record has a payload.
        if header.flag == 2 and not payload:
            self.layout = "insightface"
            self._open_insightface(header)
        else:
            self.layout = "plain"
            self._open_plain()
        self._check_property()

    # -- opening ---------------------------------------------------------------------------

    def _open_insightface(self, header) -> None:
        first_identity, end_identity = int(header.label[0]), int(header.label[1])
        n, k = first_identity - 1, end_identity - first_identity
        where = dict(path=self.rec_path, offset=self.reader.offset(0))
        if n < 0 or k < 0 or header.label[0] != first_identity or header.label[1] != end_identity:
            raise DataError(f"header record 0 has label {header.label.tolist()}; expected "
                            f"[N+1, N+1+num_identities] with N >= 0", **where)
        missing = [key for key in (1, n, first_identity, end_identity - 1)
                   if 0 < key < end_identity and key not in self.reader]
        if missing:
            raise DataError(f"header record 0 says {n} images and {k} identities (keys 1..{end_identity - 1}), "
                            f"but the index lacks key {missing[0]}", path=self.idx_path)
        ranges = np.zeros((k, 2), dtype=np.int64)
        expected_start = 1
        for c in range(k):
            key = first_identity + c
            if key not in self.reader:
                raise DataError(f"identity record {key} (class {c}) is missing from the index", path=self.idx_path)
            h, _ = unpack_record(self.reader.read(key), self.rec_path, self.reader.offset(key))
            if h.flag != 2:
                raise DataError(f"identity record {key} (class {c}) has no [start, end) label",
                                path=self.rec_path, offset=self.reader.offset(key))
            start, end = int(h.label[0]), int(h.label[1])
            if start != expected_start or end <= start or end > first_identity:
                raise DataError(f"identity record {key} (class {c}) covers images [{start}, {end}); "
                                f"expected a non-empty range starting at {expected_start} and ending "
                                f"by {first_identity}", path=self.rec_path, offset=self.reader.offset(key))
            ranges[c] = (start - 1, end - 1)
            expected_start = end
        if expected_start != first_identity:
            raise DataError(f"identity records cover images 1..{expected_start - 1}, but header "
                            f"record 0 says there are {n}", path=self.rec_path, offset=self.reader.offset(0))
        self._keys = None  # image i is record key i + 1
        self.identity_ranges = ranges
        self.labels = np.repeat(np.arange(k, dtype=np.int64), ranges[:, 1] - ranges[:, 0])
        self.num_classes = k

    def _open_plain(self) -> None:
        keys = sorted(self.reader.keys)
        labels = np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            h, _ = unpack_record(self.reader.read(key), self.rec_path, self.reader.offset(key))
            labels[i] = _label_of(h, self.rec_path, self.reader.offset(key))
        order = np.argsort(labels, kind="stable")
        self._keys = [keys[i] for i in order]
        self.labels = labels[order]
        classes, starts = np.unique(self.labels, return_index=True)
        if len(classes) and (classes[0] != 0 or classes[-1] != len(classes) - 1):
            raise DataError(f"labels are not the class ids 0..{len(classes) - 1} without gaps "
                            f"(found {len(classes)} distinct labels from {classes[0]} to {classes[-1]})",
                            path=self.rec_path)
        ends = np.append(starts[1:], len(self.labels))
        self.identity_ranges = np.stack([starts, ends], axis=1).astype(np.int64)
        self.num_classes = len(classes)

    def _check_property(self) -> None:
        if not self.property_path.exists():
            self.image_size = None
            if len(self):
                self.image_size = tuple(self.decode(0)[0].shape[:2])
            return
        num_classes, h, w = read_property(self.property_path)
        if num_classes != self.num_classes:
            raise DataError(f"says {num_classes} classes, but {self.rec_path.name} holds "
                            f"{self.num_classes} identities (labels 0..{self.num_classes - 1})",
                            path=self.property_path, line=1)
        first = jpeg_info(self.read(0)[0]) if len(self) else None  # its header only: no decoding here
        if first is not None and (first[1], first[0]) != (h, w):
            raise DataError(f"says images are {h}x{w}, but the first image of {self.rec_path.name} is "
                            f"{first[1]}x{first[0]}", path=self.property_path, line=1)
        self.image_size = (h, w)

    # -- access ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.labels)

    def key(self, i: int) -> int:
        """The record key of image i."""
        if not 0 <= i < len(self.labels):
            raise IndexError(f"image index {i} out of range 0..{len(self.labels) - 1}")
        return i + 1 if self._keys is None else self._keys[i]

    def read(self, i: int) -> tuple[bytes, int]:
        """(encoded image bytes, class id) of image i."""
        key = self.key(i)
        offset = self.reader.offset(key)
        header, payload = unpack_record(self.reader.read(key), self.rec_path, offset)
        label = int(self.labels[i])
        if _label_of(header, self.rec_path, offset) != label:
            raise DataError(f"image record {key} is labelled {_label_of(header, self.rec_path, offset)}, "
                            f"but its identity record puts it in class {label}",
                            path=self.rec_path, offset=offset)
        return payload, label

    def decode(self, i: int) -> tuple[np.ndarray, int]:
        """(BGR uint8 HxWx3 image, class id) of image i."""
        payload, label = self.read(i)
        return decode_image(payload, self.rec_path, self.reader.offset(self.key(i))), label

    def close(self) -> None:
        self.reader.close()

    def __repr__(self) -> str:
        return (f"FaceRecordSet({str(self.data_dir)!r}, prefix={self.prefix!r}: {len(self)} images, "
                f"{self.num_classes} identities, {self.image_size})")


def _label_of(header, path, offset) -> int:
    label = header.label if header.flag == 0 else (header.label[0] if len(header.label) else None)
    if label is None or not np.isfinite(label) or float(label) != int(label) or label < 0:
        raise DataError(f"image label {header.label!r} is not a non-negative integer class id",
                        path=path, offset=offset)
    return int(label)


def find_rec(path: str | Path) -> list[Path]:
    """The `.rec` files named by PATH: itself, or every `*.rec` in a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        recs = sorted(path.glob("*.rec"))
        if not recs:
            raise DataError("no .rec file in this folder", path=path)
        return recs
    if not path.exists():
        raise DataError("not found (expected a .rec file or a folder holding one)", path=path)
    if path.suffix != ".rec":
        raise DataError("expected a .rec file or a folder holding one", path=path)
    return [path]


def open_rec(rec_path: str | Path) -> FaceRecordSet:
    rec_path = Path(rec_path)
    return FaceRecordSet(rec_path.parent, rec_path.stem)


def relative_to_lst(lst_path: Path, entry_path: str) -> Path:
    p = Path(entry_path)
    return p if p.is_absolute() else (lst_path.parent / p)


# ---------------------------------------------------------------------------------------------
# rec-info and unpack
# ---------------------------------------------------------------------------------------------

def payload_format(payload: bytes) -> str:
    if payload[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if payload[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "other"


def describe(rec_path: str | Path, sample: int = 0, progress: bool = True) -> dict:
    """Counts, identities, images per identity and image sizes of one `.rec` dataset.

    Reads every image record (or the first `sample`), which also checks each record's framing
    and that its label agrees with its identity record.
    """
    from facepipe.progress import Progress

    rs = open_rec(rec_path)
    try:
        counts = rs.identity_ranges[:, 1] - rs.identity_ranges[:, 0]
        n_check = len(rs) if sample <= 0 else min(sample, len(rs))
        sizes: dict[str, int] = {}
        formats: dict[str, int] = {}
        with Progress(n_check, "rec-info", unit="img", enabled=progress and n_check > 20000) as bar:
            for i in range(n_check):
                payload, _ = rs.read(i)
                fmt = payload_format(payload)
                info = jpeg_info(payload) if fmt == "jpeg" else None
                if info is not None:
                    w, h = info[0], info[1]
                else:
                    h, w = decode_image(payload, rs.rec_path, rs.reader.offset(rs.key(i))).shape[:2]
                sizes[f"{h}x{w}"] = sizes.get(f"{h}x{w}", 0) + 1
                formats[fmt] = formats.get(fmt, 0) + 1
                bar.update(1)
        prop = None
        if rs.property_path.exists():
            prop = ",".join(map(str, read_property(rs.property_path)))
        return {
            "rec": str(rs.rec_path), "layout": rs.layout, "index": rs.reader.index_source, "images": len(rs),
            "identities": rs.num_classes,
            "images_per_identity": {
                "min": int(counts.min()) if len(counts) else 0,
                "median": float(np.median(counts)) if len(counts) else 0,
                "max": int(counts.max()) if len(counts) else 0},
            "property": prop, "image_sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
            "formats": formats, "images_checked": n_check, "verified": rs.verified, "rec_bytes": rs.rec_path.stat().st_size,
        }
    finally:
        rs.close()


def _safe_part(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def unpack(rec_path: str | Path, out_dir: str | Path, names: str = "auto", progress: bool = True) -> dict:
    """Write each image of a `.rec` (or the one .rec in a folder) as OUT/<identity>/<file>.

    Names come from `PREFIX.lst` next to the .rec when it lists the same images with the same
    labels (as `facepipe pack` writes it); otherwise folders are class ids and files record keys.
    Payload bytes are written unchanged (no re-encoding). Ends with manifest.json.
    """
    from facepipe.manifest import replacing

    recs = find_rec(rec_path)
    if len(recs) > 1:
        raise DataError(f"{len(recs)} .rec files here ({', '.join(r.name for r in recs)}); name one",
                        path=rec_path)
    rs = open_rec(recs[0])
    try:
        with replacing(out_dir, "identity_tree") as work:  # a failure leaves no folder pack would take
            return {**_unpack_into(rs, work, names, progress), "out": str(out_dir)}
    finally:
        rs.close()


def _unpack_into(rs: FaceRecordSet, out_dir: Path, names: str, progress: bool) -> dict:
    from facepipe.manifest import write_manifest
    from facepipe.progress import Progress

    lst_path = rs.data_dir / f"{rs.prefix}.lst"
    lst_names = None
    if names in ("auto", "lst") and lst_path.exists():
        _, entries = read_lst(lst_path)
        usable = (len(entries) == len(rs) and all(
            e.label == int(label) and _safe_part(Path(e.path).name) and
            (len(Path(e.path).parts) < 2 or _safe_part(Path(e.path).parent.name))
            for e, label in zip(entries, rs.labels)))
        if usable:
            lst_names = [Path(e.path) for e in entries]
        elif names == "lst":
            raise DataError(f"does not match {rs.rec_path.name} (expected {len(rs)} lines with the "
                            f"same labels in the same order)", path=lst_path)
    elif names == "lst":
        raise DataError("no .lst next to the .rec to take names from", path=lst_path)
    width = max(5, len(str(max(rs.num_classes - 1, 0))))
    written: set[Path] = set()
    with Progress(len(rs), "unpack", unit="img", enabled=progress) as bar:
        for i in range(len(rs)):
            payload, label = rs.read(i)
            fmt = payload_format(payload)
            where = dict(path=rs.rec_path, offset=rs.reader.offset(rs.key(i)))
            if fmt == "jpeg" and (jpeg_info(payload) is None or not jpeg_complete(payload)):
                raise DataError("JPEG payload without a frame header or end-of-image marker (corrupt)", **where)
            if fmt != "jpeg":
                decode_image(payload, **where)  # DataError where it is no image
            if lst_names is not None:
                p = lst_names[i]
                folder = p.parent.name if len(p.parts) > 1 else f"{label:0{width}d}"
                stem = p.stem
            else:
                folder, stem = f"{label:0{width}d}", f"{rs.key(i):08d}"
            target = out_dir / folder / (stem + {"jpeg": ".jpg", "png": ".png"}.get(fmt, ".bin"))
            if target in written:  # two .lst paths with the same folder and stem
                target = target.with_name(f"{stem}_{rs.key(i)}{target.suffix}")
            written.add(target)
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(payload)
            bar.update(1)
    write_manifest(out_dir, kind="identity_tree", extra={"source": rs.rec_path.name})
    return {"images": len(written), "identities": rs.num_classes,
            "names": "lst" if lst_names is not None else "class"}


__all__ = ["describe", "unpack", "FaceRecordSet", "InsightFaceWriter", "LstEntry", "read_lst", "write_lst", "lst_line", "read_property",
           "write_property", "detect_lst_format", "find_rec", "open_rec", "relative_to_lst"]
