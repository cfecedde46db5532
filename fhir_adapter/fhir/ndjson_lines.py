"""The resources of an NDJSON file counted as its lines, to check a Bulk Data manifest's ``count`` (IG v2: the
number of resources in the file) — by the Bulk client for a download, by the folder reader for a local export.
No HTTP stack here: an offline run imports it."""

from __future__ import annotations

from collections.abc import Callable, Iterable

#: a key of the Bulk client's local ``manifest.json``: each file's lines matched its ``count`` when it was
#: downloaded (the folder reader does not count them again)
COUNTS_CHECKED = "counts_checked"


def ndjson_lines(chunks: Callable[[], Iterable[bytes]], expected: int | None = None) -> int:
    """The lines of NDJSON content that hold something (blank lines left out, as the reader skips them), from
    the decompressed bytes ``chunks()`` gives: counted fast (every line end), and when that differs from
    ``expected`` (a manifest's ``count``) counted again line by line, so blank lines make no false alarm."""
    fast = _count_lines(chunks(), exact=False)
    if expected is None or fast == expected:
        return fast
    return _count_lines(chunks(), exact=True)


def _count_lines(chunks: Iterable[bytes], *, exact: bool) -> int:
    lines = 0
    pending = False  # the line not ended yet holds something
    for data in chunks:
        if exact:
            parts = data.split(b"\n")
            for part in parts[:-1]:
                lines += pending or bool(part.strip())
                pending = False
            pending = pending or bool(parts[-1].strip())
        elif (ends := data.count(b"\n")):
            lines += ends
            pending = bool(data[data.rfind(b"\n") + 1:].strip())
        else:
            pending = pending or bool(data.strip())
    return lines + pending
