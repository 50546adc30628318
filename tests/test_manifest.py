"""manifest.json: written last, refuses incomplete folders and tampered files."""

import pytest

from facepipe.errors import DataError
from facepipe.manifest import read_manifest, write_manifest


def test_manifest_round_trip_and_tamper(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("x")
    with pytest.raises(DataError, match="incomplete"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, kind="test")
    body = read_manifest(tmp_path, verify=True)
    assert set(body["files"]) == {"a.bin", "sub/b.txt"}
    (tmp_path / "a.bin").write_bytes(b"abd")
    with pytest.raises(DataError, match=r"a.bin: checksum mismatch"):
        read_manifest(tmp_path, verify=True)
