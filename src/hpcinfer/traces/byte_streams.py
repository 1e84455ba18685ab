"""Byte streams under the JSON parser: gzip by content, what a file starts and ends with,
and the repairs that let a damaged trace be read instead of refused.

The parser (yajl through ijson) refuses integers above int64 and invalid UTF-8. Such files
exist (Kineto has written both), so a file that trips either is read again through a
repairing stream that quotes the huge integer and replaces the bad bytes, counting each
repair for the data-quality report. Clean files never pay for the repair.
"""

from __future__ import annotations

import codecs
import re
import zlib
from pathlib import Path
from typing import BinaryIO

HEAD_BYTES = 4 << 20  # the metadata before `traceEvents` (device properties, distributedInfo)
TAIL_BYTES = 256 << 10  # the metadata after it (baseTimeNanoseconds, sometimes more)

_HUGE_INT = re.compile(rb"([:,\[]\s*)(-?\d{19,})(?=\s*[,}\]])")
_INT64_MAX = 2**63 - 1
_DELIMITERS = re.compile(rb"[,}\]][^,}\]]*\Z")
_ESCAPED = re.compile("[\udc80-\udcff]")


def open_trace(path: Path) -> BinaryIO | GunzipStream:
    """The file's bytes, gunzipped when it is gzip (by its first bytes, not its name)."""
    raw = path.open("rb")
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return GunzipStream(raw)
    raw.seek(0)
    return raw


class GunzipStream:
    """gzip without `gzip.GzipFile`'s one failure mode we cannot use: at a cut it raises
    and drops the last chunk. This gives every byte before the cut and sets `cut`."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._inflate = zlib.decompressobj(31)
        self.cut = False

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        size = size if size > 0 else 1 << 16
        while True:
            pending = self._inflate.unconsumed_tail
            if self._inflate.eof:  # end of one gzip member: another may follow
                pending = self._inflate.unused_data
                if not pending:
                    pending = self._raw.read(1 << 16)
                    if not pending:
                        return b""
                self._inflate = zlib.decompressobj(31)
            if not pending:
                pending = self._raw.read(1 << 16)
                if not pending:
                    self.cut = True  # the file ends before the gzip end marker
                    return self._inflate.flush()
            out = self._inflate.decompress(pending, size)
            if out:
                return out

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> GunzipStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class RecordingStream:
    """Passes reads through, keeping the first HEAD_BYTES and last TAIL_BYTES it saw and
    how many bytes went by (for naming where a file broke off)."""

    def __init__(self, inner: BinaryIO | GunzipStream) -> None:
        self._inner = inner
        self.head = bytearray()
        self._tail = bytearray()
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._inner.read(size)
        self.position += len(chunk)
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        self._tail += chunk
        if len(self._tail) > 2 * TAIL_BYTES:
            del self._tail[:-TAIL_BYTES]
        return chunk

    @property
    def tail(self) -> bytes:
        return bytes(self._tail[-TAIL_BYTES:])

    @property
    def cut(self) -> bool:
        """The file ended inside its gzip stream."""
        return isinstance(self._inner, GunzipStream) and self._inner.cut

    def close(self) -> None:
        self._inner.close()


class RepairingStream:
    """Reads `inner`, replacing invalid UTF-8 (`fix_utf8`) and quoting integers above int64
    (`fix_ints`, so they arrive as strings); counts both."""

    def __init__(self, inner: RecordingStream, *, fix_utf8: bool, fix_ints: bool) -> None:
        self._inner = inner
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._fix_utf8 = fix_utf8
        self._fix_ints = fix_ints
        self._carry = b""
        self._done = False
        self.invalid_utf8 = 0
        self.huge_ints = 0

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson asks for nothing to learn whether the stream gives bytes
            return b""
        while not self._done:
            chunk = self._inner.read(size if size > 0 else 1 << 16)
            if not chunk:
                self._done = True
            if self._fix_utf8:
                chunk = self._clean_utf8(chunk, final=self._done)
            out = self._quote_huge_ints(chunk) if self._fix_ints else chunk
            if out:
                return out
        return b""

    def _clean_utf8(self, chunk: bytes, *, final: bool) -> bytes:
        text = self._decoder.decode(chunk, final)
        bad = len(_ESCAPED.findall(text))
        if not bad:
            return text.encode("utf-8")
        self.invalid_utf8 += bad
        return _ESCAPED.sub("\ufffd", text).encode("utf-8")

    def _quote_huge_ints(self, chunk: bytes) -> bytes:
        buffer = self._carry + chunk
        if self._done:
            self._carry = b""
            return _HUGE_INT.sub(self._quote, buffer)
        last = _DELIMITERS.search(buffer)
        if last is None:  # no delimiter yet: a number may still be growing
            self._carry = buffer
            return b""
        split = last.start()  # keep the delimiter as the next round's left context
        self._carry = buffer[split:]
        return _HUGE_INT.sub(self._quote, buffer[: split + 1])[:-1]

    def _quote(self, found: re.Match[bytes]) -> bytes:
        if abs(int(found.group(2))) <= _INT64_MAX:
            return found.group(0)
        self.huge_ints += 1
        return found.group(1) + b'"' + found.group(2) + b'"'

    def close(self) -> None:
        self._inner.close()
