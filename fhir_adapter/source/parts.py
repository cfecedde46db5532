"""The subjects pass of a local export folder (:meth:`FileSource.subject_records`) split into parts that
worker processes read at the same time: each part is a range of lines of one file (a large uncompressed
NDJSON file is cut at line ends into ranges of about :data:`PART_BYTES`; any other file is one part), and
what a part keeps is written to a part file of its own, grouped by *chunk* (consecutive subjects in the
run's order, :func:`chunks`). A chunk's records are then read back from every part file in part order, so
each subject gets its records in the order the one-process pass keeps them, and the parts' counts and
quarantined lines, merged in part order, are those of that pass.

A part file is a sequence of records ``<subject index, length><bytes>`` (:data:`RECORD`); a part buffers at
most :data:`BUFFER_BYTES` before it writes them, so memory stays flat in the size of the export.
"""

from __future__ import annotations

import io
import os
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import orjson

from fhir_adapter.job.runlog import Quarantined, RunLog
from fhir_adapter.source.base import SUBJECT_TYPES, Resource
from fhir_adapter.source.files import FileSource
from fhir_adapter.source.layout import UNREADABLE, DataFile, LocalFolder, unreadable, without_bom

#: a large file is cut into parts of about this many bytes
PART_BYTES = 8 * 1024 * 1024
#: what a part keeps in memory before it writes it to its part file
BUFFER_BYTES = 8 * 1024 * 1024
#: subjects per chunk at most (a chunk's records are read back at once, and its outcomes, which carry the
#: subjects' export text, come back at once)
CHUNK_SUBJECTS = 8
#: a record of a part file: the subject's index in the run's order, the length of the bytes that follow
RECORD = struct.Struct("<II")


@dataclass(frozen=True)
class Part:
    """Lines ``[first_line, …)`` at bytes ``[start, end)`` of ``file`` (``end`` None: the whole file)."""

    index: int
    file: DataFile
    start: int = 0
    end: int | None = None
    first_line: int = 1


@dataclass(frozen=True)
class PartInput:
    """What every part needs: the enrolled patients in the run's order, the chunk of each, the export's
    base and every Patient id in it (to tell an unknown patient from one not in the trial)."""

    order: list[str]
    chunk_of: list[int]
    base: str | None
    known_patients: set[str]
    folder: Path


@dataclass
class PartResult:
    """What a part kept and counted: ``sections`` (chunk → the (offset, length) of its records in ``path``),
    the shared resources each patient's records reference, the counts and the quarantined lines."""

    index: int
    path: Path
    sections: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    refs: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    #: what the part's lines added to a run log (quarantined lines, their counts): a RunLog is not sent
    log_counts: dict[str, int] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[Quarantined] = field(default_factory=list)


def splittable(source: object) -> TypeGuard[FileSource]:
    """A :class:`FileSource` of a local folder that reads its subjects as FileSource does."""
    return isinstance(source, FileSource) and isinstance(source.folder, LocalFolder) \
        and type(source).subject_records is FileSource.subject_records


def chunks(subjects: int, workers: int) -> list[int]:
    """The size of each chunk of ``subjects`` consecutive subjects: chunks shrink towards the end (a share of
    what is left, at most :data:`CHUNK_SUBJECTS`), so the workers finish close together."""
    sizes: list[int] = []
    left = subjects
    while left > 0:
        size = max(1, min(CHUNK_SUBJECTS, -(-left // (4 * workers))))
        sizes.append(size)
        left -= size
    return sizes


def plan(source: FileSource) -> Iterator[Part]:
    """The parts of the subjects pass, in its order (each as soon as it is found: the first ones can be read
    while a large file is still being cut)."""
    n = 0
    for f in source.subject_files():
        if f.ndjson and f.rtype in SUBJECT_TYPES and not f.name.endswith(".gz") \
                and isinstance(source.folder, LocalFolder):
            for start, end, first_line in _ranges(f):
                yield Part(n, f, start, end, first_line)
                n += 1
        else:
            yield Part(n, f)
            n += 1


def _ranges(f: DataFile) -> Iterator[tuple[int, int | None, int]]:
    """(start, end, first line number) of ranges of about :data:`PART_BYTES` cut after a line end."""
    try:
        size = os.path.getsize(f.path)
        with open(f.path, "rb") as fh:
            start, line = 0, 1
            while start + PART_BYTES + PART_BYTES // 2 < size:
                fh.seek(start)
                newlines = fh.read(PART_BYTES).count(b"\n")
                rest = fh.readline()  # to the end of the line the cut falls in
                newlines += rest.endswith(b"\n")
                yield start, start + PART_BYTES + len(rest), line
                start, line = start + PART_BYTES + len(rest), line + newlines
    except UNREADABLE as exc:
        raise unreadable(f, exc) from exc
    yield start, None, line


def _lines(part: Part) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a part's range, blank lines skipped (as :func:`~.layout.read_lines`)."""
    try:
        with open(part.file.path, "rb") as fh:
            fh.seek(part.start)
            data = fh.read() if part.end is None else fh.read(part.end - part.start)
    except UNREADABLE as exc:
        raise unreadable(part.file, exc) from exc
    for n, line in enumerate(io.BytesIO(data), start=part.first_line):
        if n == 1:
            line = without_bom(line)
        if line.strip():
            yield n, line


def route(part: Part, given: PartInput) -> PartResult:
    """Read one part and write what it keeps to its part file (in a worker process)."""
    result = PartResult(part.index, given.folder / f"part-{part.index}")
    log = RunLog()
    reader = FileSource.line_reader(given.known_patients, log)
    index = {pid: i for i, pid in enumerate(given.order)}
    lines = _lines(part) if part.start or part.end is not None else reader.file_lines(part.file)
    buffered: dict[int, list[bytes]] = {}
    size = 0
    with result.path.open("wb") as out:
        for pid, record, found in reader.kept_records(part.file, lines, index, result.counts, given.base):
            i = index[pid]
            data = record if isinstance(record, bytes) else orjson.dumps(record)
            buffered.setdefault(given.chunk_of[i], []).append(RECORD.pack(i, len(data)) + data)
            size += len(data)
            if found:
                result.refs.setdefault(pid, set()).update(found)
            if size > BUFFER_BYTES:
                _flush(out, buffered, result)
                size = 0
        _flush(out, buffered, result)
    result.log_counts, result.warnings, result.quarantine = dict(log.counts), log.warnings, log.quarantine
    return result


def _flush(out: io.BufferedWriter, buffered: dict[int, list[bytes]], result: PartResult) -> None:
    for chunk in sorted(buffered):
        data = b"".join(buffered[chunk])
        result.sections.setdefault(chunk, []).append((out.tell(), len(data)))
        out.write(data)
    buffered.clear()


def chunk_records(sections: list[tuple[Path, list[tuple[int, int]]]], first: int,
                  count: int) -> list[list[bytes | Resource]]:
    """The records of subjects ``first`` … ``first + count - 1`` (one chunk) from the parts' files, in part
    order: each subject's list."""
    records: list[list[bytes | Resource]] = [[] for _ in range(count)]
    for path, spans in sections:
        with path.open("rb") as fh:
            for offset, length in spans:
                fh.seek(offset)
                data = fh.read(length)
                at = 0
                while at < len(data):
                    i, n = RECORD.unpack_from(data, at)
                    at += RECORD.size
                    records[i - first].append(data[at:at + n])
                    at += n
    return records
