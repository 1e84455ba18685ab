"""Stream one Kineto trace's events in bounded memory, and say what was wrong with the file.

`ijson` (yajl2_c backend) builds one event at a time, so a 500 MB trace costs megabytes,
not the gigabytes of `json.load`. A truncated file gives the events before the cut; a file
with integers above int64 or invalid UTF-8 is read again through a repairing stream (the
events already delivered are skipped, so the caller sees each event once). Nothing here
raises on a damaged file: it reports it in `FileQuality`.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ijson

from hpcinfer.traces.byte_streams import RecordingStream, RepairingStream, open_trace

EVENTS_PREFIX = "traceEvents.item"


@dataclass
class FileQuality:
    """What reading one file found wrong with it (the `data_quality` entry of the file)."""

    truncated: bool = False
    huge_ints: int = 0
    invalid_utf8: int = 0
    events_read: int = 0
    events_skipped: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class TraceMetadata:
    """The top-level fields around `traceEvents` that the analysis needs."""

    distributed_info: dict[str, Any] | None = None
    base_time_ns: int = 0
    has_trace_events: bool = False


class TraceReader:
    """One trace file: iterate `events()` once, then read `metadata` and `quality`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.quality = FileQuality()
        self.metadata = TraceMetadata()

    def events(self) -> Iterator[dict[str, Any]]:
        """Every complete event of the file, in file order (repairs and cuts reported)."""
        delivered = 0
        fix_utf8 = fix_ints = False
        while True:
            recording = RecordingStream(open_trace(self.path))
            stream: RecordingStream | RepairingStream = recording
            if fix_utf8 or fix_ints:
                stream = RepairingStream(recording, fix_utf8=fix_utf8, fix_ints=fix_ints)
            retry = None
            try:
                skip = delivered
                for event in ijson.items(stream, EVENTS_PREFIX, use_float=True):
                    if skip:
                        skip -= 1
                        continue
                    delivered += 1
                    yield event
            except ijson.JSONError as exc:
                retry = self._parse_failure(str(exc), recording, fix_utf8, fix_ints)
            except (OSError, zlib.error) as exc:
                self.quality.truncated = True
                self.quality.notes.append(
                    f"the gzip data is damaged after {recording.position} bytes ({exc}): "
                    "the events before it are analysed"
                )
            finally:
                stream.close()
            if isinstance(stream, RepairingStream):
                self.quality.huge_ints = stream.huge_ints
                self.quality.invalid_utf8 = stream.invalid_utf8
            if retry is None:
                self.metadata = _metadata(bytes(recording.head), recording.tail)
                self.quality.events_read = delivered
                return
            fix_utf8, fix_ints = retry

    def _parse_failure(
        self, message: str, recording: RecordingStream, fix_utf8: bool, fix_ints: bool
    ) -> tuple[bool, bool] | None:
        """(fix_utf8, fix_ints) to read the file again with, or None: stop, noted."""
        if "integer overflow" in message and not fix_ints:
            return fix_utf8, True
        if "UTF8" in message and not fix_utf8:
            return True, fix_ints
        self.quality.truncated = True
        first_line = message.strip().splitlines()[0] if message.strip() else "parse error"
        position = recording.position
        if recording.cut:
            self.quality.notes.append(
                f"the gzip stream ends early after {position} bytes (truncated): "
                "the events before the cut are analysed"
            )
        elif "premature EOF" in message:
            self.quality.notes.append(
                f"the file ends in the middle of the JSON after {position} bytes (truncated): "
                "the events before the cut are analysed"
            )
        else:
            self.quality.notes.append(
                f"the JSON is malformed near byte {position} ({first_line}): "
                "the events before it are analysed"
            )
        return None


def _metadata(head: bytes, tail: bytes) -> TraceMetadata:
    """distributedInfo and baseTimeNanoseconds from before or after `traceEvents`."""
    found = TraceMetadata(has_trace_events=b'"traceEvents"' in head)
    for text in (head, tail):
        info = _value_of(text, "distributedInfo")
        if isinstance(info, dict) and found.distributed_info is None:
            found.distributed_info = info
        base = _value_of(text, "baseTimeNanoseconds")
        if isinstance(base, int | float) and not found.base_time_ns:
            found.base_time_ns = int(base)
    return found


def _value_of(data: bytes, key: str) -> Any:
    """The JSON value after `"key":` in a fragment of the file (None if absent or cut)."""
    found = re.search(rb'"' + key.encode() + rb'"\s*:\s*', data)
    if found is None:
        return None
    text = data[found.end() :].decode("utf-8", "replace")
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    return value
