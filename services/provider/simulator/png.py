"""Tiny real PNG images, a different colour for every (task, index)."""

from __future__ import annotations

import hashlib
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_for(key: str, size: int = 16) -> bytes:
    """A ``size`` by ``size`` RGB PNG whose two-colour pattern is derived from ``key``."""
    digest = hashlib.sha256(key.encode()).digest()
    a, b = digest[:3], digest[3:6]
    rows = b"".join(
        b"\x00" + b"".join(a if (x // 4 + y // 4) % 2 else b for x in range(size))
        for y in range(size)
    )
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )
