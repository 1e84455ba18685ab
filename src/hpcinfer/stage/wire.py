"""What travels in a broadcast: chunk frames and a per-file trailer.

Every rank knows each file's size from the listing, so every rank can compute each chunk's
length and post a receive of exactly that many bytes; the sender needs no length field.

- chunk frame = header (status, crc32 of the data) + data, one `Bcast`;
- trailer (after a file's last chunk) = status + the file's sha256, one `Bcast`.

A status other than OK tells receivers that rank 0 could not read the source: they stop
that file at the same point, so no rank waits for a broadcast that never comes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OK = 0
SOURCE_FAILED = 1

HEADER = struct.Struct("<II")  # status, crc32
TRAILER = struct.Struct("<I32s")  # status, sha256 digest


@dataclass(frozen=True)
class ChunkInfo:
    """One chunk of one file; `index` counts from 0 (messages count from 1)."""

    path: str
    index: int
    count: int
    offset: int
    length: int

    def describe(self) -> str:
        last = self.offset + self.length - 1
        return f"chunk {self.index + 1} of {self.count} of {self.path} (bytes {self.offset}-{last})"


def chunks(path: str, size: int, chunk_bytes: int) -> list[ChunkInfo]:
    """The chunks of a file of `size` bytes (none for an empty file)."""
    count = -(-size // chunk_bytes)
    return [
        ChunkInfo(path, i, count, i * chunk_bytes, min(chunk_bytes, size - i * chunk_bytes))
        for i in range(count)
    ]
