"""MXNet RecordIO without MXNet: framing, `IRHeader`, the `.idx` index, writers and readers.

Byte-compatible with MXNet 1.9.1 (dmlc-core `RecordIOWriter`/`RecordIOReader`, `mx.recordio`):

- A record is written as one or more parts. Each part is `magic` (uint32 0xced7230a, little
  endian), `lrecord` (uint32: `cflag << 29 | length`), `length` bytes of data. Parts are needed
  because a reader that lost its place resynchronises on the magic: wherever the payload holds
  the magic at a 4-byte aligned position, the writer cuts the payload there and drops those 4
  bytes; the reader puts them back between parts. cflag is 0 for a whole record, 1 for the first
  part, 2 for a middle part and 3 for the last part. Only the end of the record is zero-padded to
  a multiple of 4 (cut points are 4-aligned, so inner parts need no padding).
- A record of an image dataset starts with an `IRHeader`: struct `IfQQ` (flag, label, id, id2;
  24 bytes). With flag = 0 the label is the float in the header; with flag = n > 0 the label is
  an array of n float32 stored right after the header, before the payload.
- The `.idx` file is text, one `key<TAB>byte offset` line per record.

Readers are safe in multi-process DataLoader workers: each process opens its own file handle
(the handle is reopened when the PID changes and is never pickled).
"""

from __future__ import annotations

import numbers
import os
import struct
from collections import namedtuple
from pathlib import Path
from typing import Iterator

import numpy as np

from facepipe.errors import DataError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_RECORD_BYTES = (1 << 29) - 1  # lrecord keeps 29 bits for the length
_LREC = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")
IR_SIZE = _IR.size  # 24 bytes, as MXNet's native 'IfQQ' on every platform MXNet ran on
# A label array longer than this is corrupt data, not a real multi-label record.
_MAX_LABEL_WIDTH = 1 << 20

IRHeader = namedtuple("IRHeader", ["flag", "label", "id", "id2"])
IRHeader.__doc__ = """MXNet's image record header: flag, label (float or float32 array), id, id2."""


# ---------------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------------

def frame(payload: bytes) -> bytes:
    """The bytes dmlc's RecordIOWriter writes for one record (parts, magic escapes, padding)."""
    payload = bytes(payload)
    n = len(payload)
    if n > MAX_RECORD_BYTES:
        raise DataError(f"record of {n} bytes is too large: RecordIO allows at most {MAX_RECORD_BYTES}")
    cuts = _magic_positions(payload)
    if not cuts:  # the common case, in one copy
        return b"".join((_LREC.pack(MAGIC, n), payload, b"\0" * (-n % 4)))
    out = bytearray()
    start = 0
    for i in cuts:
        out += _LREC.pack(MAGIC, (1 if start == 0 else 2) << 29 | (i - start))
        out += payload[start:i]
        start = i + 4
    out += _LREC.pack(MAGIC, 3 << 29 | (n - start))
    out += payload[start:]
    out += b"\0" * (-n % 4)
    return bytes(out)


def _magic_positions(payload: bytes) -> list[int]:
    """4-byte aligned offsets where the payload holds the magic (dmlc scans only those)."""
    limit = len(payload) - len(payload) % 4
    if MAGIC_BYTES not in payload:  # most payloads: one fast scan
        return []
    words = np.frombuffer(payload, dtype="<u4", count=limit // 4)
    return (np.flatnonzero(words == MAGIC) * 4).tolist()


def _unframe(read, offset: int, path, size: int) -> tuple[bytes, int]:
    """Read one record starting at `offset` with `read(offset, n) -> bytes` from a `size`-byte file.

    Returns (payload, offset of the next record). Raises DataError naming the byte offset for a
    wrong magic, a bad continuation flag or a record cut short.
    """
    parts: list[bytes] = []
    pos = offset
    while True:
        head = read(pos, 8)
        if len(head) < 8:
            raise DataError(f"file ends inside a record header: expected 8 bytes, found {len(head)} "
                            f"(the .rec is truncated)", path=path, offset=pos)
        magic, lrec = _LREC.unpack(head)
        if magic != MAGIC:
            raise DataError(f"wrong magic 0x{magic:08x}: expected RecordIO magic 0x{MAGIC:08x} "
                            f"(not a RecordIO file, or the index points into the middle of a record)",
                            path=path, offset=pos)
        cflag, length = lrec >> 29, lrec & MAX_RECORD_BYTES
        expected = (0, 1) if not parts else (2, 3)
        if cflag not in expected:
            raise DataError(f"continuation flag {cflag} where {' or '.join(map(str, expected))} was "
                            f"expected (corrupt record)", path=path, offset=pos)
        padded = length + (-length % 4)
        # Checked before reading: a corrupt length must not make us allocate up to 512 MB.
        if pos + 8 + padded > size:
            raise DataError(f"record cut short: expected {padded} bytes of data, found "
                            f"{max(size - pos - 8, 0)} (the .rec is truncated)", path=path, offset=pos)
        data = read(pos + 8, padded)
        if len(data) < padded:  # the file shrank since we looked at its size
            raise DataError(f"record cut short: expected {padded} bytes of data, found {len(data)}",
                            path=path, offset=pos)
        parts.append(data[:length])
        pos += 8 + padded
        if cflag in (0, 3):
            return (MAGIC_BYTES.join(parts) if len(parts) > 1 else parts[0]), pos


# ---------------------------------------------------------------------------------------------
# IRHeader
# ---------------------------------------------------------------------------------------------

def pack_record(label, payload: bytes = b"", id: int = 0, id2: int = 0) -> bytes:
    """`mx.recordio.pack`: a number label goes in the header (flag 0), an array after it."""
    if isinstance(label, numbers.Number):
        return _IR.pack(0, float(label), int(id), int(id2)) + bytes(payload)
    labels = np.asarray(label, dtype="<f4").ravel()
    if labels.size == 0:
        # MXNet would write flag 0 and then misread the array bytes; refuse instead.
        raise DataError("empty label array: give a number or at least one label")
    return _IR.pack(labels.size, 0.0, int(id), int(id2)) + labels.tobytes() + bytes(payload)


def unpack_record(record: bytes, path=None, offset: int | None = None) -> tuple[IRHeader, bytes]:
    """`mx.recordio.unpack`: (IRHeader, payload); an array label becomes a float32 array."""
    if len(record) < IR_SIZE:
        raise DataError(f"record of {len(record)} bytes is shorter than the {IR_SIZE}-byte IRHeader",
                        path=path, offset=offset)
    flag, label, rid, rid2 = _IR.unpack_from(record)
    if flag == 0:
        return IRHeader(0, label, rid, rid2), record[IR_SIZE:]
    end = IR_SIZE + 4 * flag
    if flag > _MAX_LABEL_WIDTH or end > len(record):
        raise DataError(f"IRHeader says {flag} float labels follow, but the record has only "
                        f"{len(record) - IR_SIZE} bytes after the header", path=path, offset=offset)
    labels = np.frombuffer(record, dtype="<f4", count=flag, offset=IR_SIZE).astype(np.float32)
    return IRHeader(flag, labels, rid, rid2), record[end:]


def encode_image(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes as `mx.recordio.pack_img` makes them (OpenCV, BGR input)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DataError(f"OpenCV could not JPEG-encode an image of shape {image.shape}")
    return buf.tobytes()


def decode_image(payload: bytes, path=None, offset: int | None = None, flags: int | None = None) -> np.ndarray:
    """BGR uint8 image from encoded bytes (as `unpack_img`), DataError when it does not decode."""
    import cv2

    try:
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR if flags is None else flags)
    except cv2.error as exc:  # e.g. a header claiming more pixels than OpenCV allows
        raise DataError(f"payload of {len(payload)} bytes is not decodable: "
                        f"{str(exc).strip().splitlines()[-1][:200]}", path=path, offset=offset) from None
    if image is None:
        raise DataError(f"payload of {len(payload)} bytes is not a decodable image (expected JPEG/PNG)",
                        path=path, offset=offset)
    return image


# ---------------------------------------------------------------------------------------------
# .idx
# ---------------------------------------------------------------------------------------------

def idx_path_for(rec_path: str | Path) -> Path:
    return Path(rec_path).with_suffix(".idx")


def _read_idx_text(idx_path: Path) -> str:
    try:
        return idx_path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError("index file not found (expected key<TAB>offset lines next to the .rec)",
                        path=idx_path) from None
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror} (expected a key<TAB>offset text file)", path=idx_path) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not a text index: byte {exc.start} is not UTF-8", path=idx_path) from None


def read_idx(idx_path: str | Path, rec_size: int | None = None, text: str | None = None) -> dict[int, int]:
    """Parse a `.idx` file: key -> byte offset, checked against the .rec size when given.

    Line by line, so the first bad line is named; `read_idx_arrays` is the fast path.
    """
    idx_path = Path(idx_path)
    text = _read_idx_text(idx_path) if text is None else text
    index: dict[int, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cols = line.strip().split("\t")
        if len(cols) != 2:
            raise DataError(f"expected 'key<TAB>offset', got {line!r}", path=idx_path, line=n)
        try:
            key, offset = int(cols[0]), int(cols[1])
        except ValueError:
            raise DataError(f"expected integer key and offset, got {line!r}", path=idx_path, line=n) from None
        if not -(1 << 63) <= key < (1 << 63):
            raise DataError(f"key {key} does not fit in 64 bits", path=idx_path, line=n)
        if offset < 0 or offset % 4:
            raise DataError(f"offset {offset} is not a record start (records start at multiples of 4)",
                            path=idx_path, line=n)
        if rec_size is not None and offset + 8 > rec_size:
            raise DataError(f"offset {offset} points past the end of the .rec ({rec_size} bytes)",
                            path=idx_path, line=n)
        if key in index:
            raise DataError(f"key {key} appears twice", path=idx_path, line=n)
        index[key] = offset
    return index


def _distinct(keys: np.ndarray) -> bool:
    if keys.size < 2 or bool((np.diff(keys) > 0).all()):  # the usual, increasing keys
        return True
    ordered = np.sort(keys)
    return not (ordered[1:] == ordered[:-1]).any()


def read_idx_arrays(idx_path: str | Path, rec_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) as int64 arrays in file order, with the same checks as `read_idx`.

    Parsed in one vectorised pass (Glint360K's 17M lines in seconds, and arrays rather than a
    dict, so forked DataLoader workers share the pages instead of copying them); any problem
    falls back to the line-by-line parser, which names the line.
    """
    idx_path = Path(idx_path)
    text = _read_idx_text(idx_path)
    lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            values = np.fromstring(text, dtype=np.int64, sep=" ")
    except ValueError:
        values = np.zeros(0, np.int64)
    ok = (values.size == 2 * lines and text.count("\t") == lines and "\n\n" not in text
          and not text.startswith("\n"))
    # numpy saturates numbers beyond 64 bits instead of failing: leave those to the slow path
    ok = ok and not np.isin(values, (np.iinfo(np.int64).min, np.iinfo(np.int64).max)).any()
    if ok:
        keys, offsets = values[0::2].copy(), values[1::2].copy()
        ok = (bool((offsets >= 0).all()) and not (offsets % 4).any()
              and (rec_size is None or not (offsets + 8 > rec_size).any())
              and _distinct(keys))
    if not ok:
        index = read_idx(idx_path, rec_size, text)  # raises with the line at fault
        keys = np.fromiter(index.keys(), np.int64, len(index))
        offsets = np.fromiter(index.values(), np.int64, len(index))
    return keys, offsets


# ---------------------------------------------------------------------------------------------
# Writer and readers
# ---------------------------------------------------------------------------------------------

class RecordWriter:
    """Write records (and, with `idx_path`, the `.idx` index) as `MXIndexedRecordIO(..., 'w')`.

        with RecordWriter("train.rec", "train.idx") as w:
            w.write(pack_record(label, jpeg_bytes, id=1), key=1)
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else None
        self._rec = open(self.rec_path, "wb", buffering=1 << 20)
        self._idx = open(self.idx_path, "w", encoding="utf-8", newline="\n") if self.idx_path else None
        self._pos = 0
        self._keys: set[int] = set()

    def write(self, record: bytes, key: int | None = None) -> int:
        """Append one record; returns its byte offset. A key is required when writing an index."""
        if self._idx is not None:
            if key is None:
                raise ValueError("RecordWriter with an index: write(record, key=...) needs a key")
            if key in self._keys:
                raise DataError(f"key {key} written twice", path=self.idx_path)
            self._keys.add(int(key))
        offset = self._pos
        n = len(record)
        if n <= MAX_RECORD_BYTES and MAGIC_BYTES not in record:
            # the usual record, written without building a framed copy first
            self._rec.write(_LREC.pack(MAGIC, n))
            self._rec.write(record)
            self._rec.write(b"\0" * (-n % 4))
            self._pos += 8 + n + (-n % 4)
        else:
            framed = frame(record)
            self._rec.write(framed)
            self._pos += len(framed)
        if self._idx is not None:
            self._idx.write(f"{int(key)}\t{offset}\n")
        return offset

    def close(self) -> None:
        if self._rec is not None:
            self._rec.close()
            self._rec = None
        if self._idx is not None:
            self._idx.close()
            self._idx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Handle:
    """A read-only file descriptor that is reopened in each process and never pickled."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._pid: int | None = None

    def fd(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            # A forked worker inherits the parent's descriptor; use its own instead.
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                raise DataError("record file not found", path=self.path) from None
            except OSError as exc:
                raise DataError(f"cannot open: {exc.strerror}", path=self.path) from None
            self._pid = os.getpid()
        return self._fd

    def read(self, offset: int, n: int) -> bytes:
        return os.pread(self.fd(), n, offset)

    def size(self) -> int:
        return os.fstat(self.fd()).st_size

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = self._pid = None

    def __getstate__(self):
        return {"path": self.path, "_fd": None, "_pid": None}

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class IndexedRecordReader:
    """Random access by key, as `MXIndexedRecordIO(idx, rec, 'r')`.

    `reader[key]` / `reader.read(key)` return the record bytes (IRHeader + payload); `keys` is the
    index order. Picklable and fork-safe: a DataLoader worker reopens the file on first use.

    With `scan_if_missing=True` a missing `.idx` is rebuilt in memory by reading the .rec once,
    keying records by their position (0, 1, 2, ...), which is how InsightFace and `facepipe
    pack` number them; `index_source` then says "scan".
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None,
                 scan_if_missing: bool = False):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else idx_path_for(rec_path)
        self._handle = _Handle(self.rec_path)
        self.size = self._handle.size()
        if scan_if_missing and not self.idx_path.exists():
            offsets = [offset for offset, _ in iter_records(self.rec_path)]
            self._keys = np.arange(len(offsets), dtype=np.int64)
            self._offsets = np.asarray(offsets, dtype=np.int64)
            self.index_source = "scan"
        else:
            self._keys, self._offsets = read_idx_arrays(self.idx_path, self.size)
            self.index_source = str(self.idx_path)
        # keys 0..n-1 in order (every InsightFace set): a key is its own position
        self._dense = bool(np.array_equal(self._keys, np.arange(len(self._keys))))
        self._order = None if self._dense else np.argsort(self._keys, kind="stable")

    @property
    def keys(self) -> list[int]:
        """Keys in index order."""
        return self._keys.tolist()

    def __len__(self) -> int:
        return len(self._keys)

    def _position(self, key) -> int | None:
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            return None
        if self._dense:
            return int(key) if 0 <= key < len(self._keys) else None
        i = int(np.searchsorted(self._keys, key, sorter=self._order))
        if i < len(self._keys) and self._keys[self._order[i]] == key:
            return int(self._order[i])
        return None

    def __contains__(self, key) -> bool:
        return self._position(key) is not None

    def offset(self, key: int) -> int:
        i = self._position(key)
        if i is None:
            raise DataError(f"key {key} is not in the index", path=self.idx_path)
        return int(self._offsets[i])

    def read(self, key: int) -> bytes:
        payload, _ = _unframe(self._handle.read, self.offset(key), self.rec_path, self.size)
        return payload

    __getitem__ = read

    def close(self) -> None:
        self._handle.close()

    def __getstate__(self):
        # No file descriptor travels to another process: the worker opens its own on first read.
        state = dict(self.__dict__)
        state["_handle"] = _Handle(self.rec_path)
        return state

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_idx_by_scan(rec_path: str | Path, idx_path: str | Path | None = None) -> int:
    """Rebuild a lost `.idx` (records keyed 0, 1, 2, ... in file order); returns the count."""
    idx_path = Path(idx_path) if idx_path is not None else idx_path_for(rec_path)
    lines = [f"{n}\t{offset}\n" for n, (offset, _) in enumerate(iter_records(rec_path))]
    tmp = idx_path.with_name(idx_path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, idx_path)
    return len(lines)


def iter_records(rec_path: str | Path, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """Read a .rec front to back without an index: yields (byte offset, record bytes)."""
    rec_path = Path(rec_path)
    try:
        f = open(rec_path, "rb", buffering=0)
    except FileNotFoundError:
        raise DataError("record file not found", path=rec_path) from None
    except OSError as exc:
        raise DataError(f"cannot open: {exc.strerror}", path=rec_path) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        reader = _SequentialBuffer(f, start)
        pos = start
        while reader.read(pos, 1):
            start_of_record = pos
            payload, pos = _unframe(reader.read, pos, rec_path, size)
            yield start_of_record, payload


class _SequentialBuffer:
    """`read(offset, n)` over a file read forward in large blocks (offsets only ever grow)."""

    def __init__(self, f, start: int, block: int = 1 << 22):
        self.f, self.block = f, block
        f.seek(start)
        self.buf = b""
        self.base = start

    def read(self, offset: int, n: int) -> bytes:
        lo = offset - self.base
        while lo + n > len(self.buf):
            more = self.f.read(max(self.block, n))
            if not more:
                break
            self.buf = self.buf[lo:] + more
            self.base += lo
            lo = 0
        return self.buf[lo:lo + n]
