"""JPEG structure read without decoding: frame size and completeness of a file's bytes."""

from __future__ import annotations

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_info(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG's frame header, or None if not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2
            continue
        if marker in _SOF_MARKERS:
            if i + 10 > n:
                return None
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return w, h, data[i + 9]
        if marker in (0xDA, 0xD9):  # scan or end before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def jpeg_complete(data: bytes) -> bool:
    """True when an end-of-image marker follows the last scan (a truncated file has none).

    OpenCV decodes a truncated JPEG without an error (grey bottom rows), so this is the check
    that keeps cut-off downloads out of a dataset.
    """
    if data[-2:] == b"\xff\xd9":  # the usual file; a cut can only end here inside a header,
        return b"\xff\xda" in data  # which jpeg_info rejects, or right after a complete scan
    return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") >= 0
