"""Writing below an output folder without leaving it or writing through a symbolic link (issue 11).

The guards every writer under OUT (and under a report's results folder) goes through; the job's file names
(``fhir_adapter/job/outpaths.py``) and the readers that write beside a run's outputs (the report, the review
decision file, the server state) use them, so they sit below every layer and import nothing of the adapter.

* :func:`inside`: a path that would resolve outside OUT raises :class:`UnsafePath`.
* An output the adapter replaces whole replaces a link standing in its place as it replaces a previous
  output: the link is removed, what it points to is not touched (:func:`replaced_output`); a file written anew
  by a writer that may find a link planted at its name at any time (the Bulk Data download folder, resumed by a
  later run) is opened without following one (:func:`open_new`).
* A folder the adapter writes into, or a file it appends to, cannot be replaced without losing what it holds:
  a link there, or in any folder between OUT and it, stops the command before it writes, naming the link and
  the fix (:func:`without_links`, :func:`real_folder`).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import BinaryIO


class UnsafePath(ValueError):
    """A path built from input would leave OUT, or two subjects would share a file."""


def inside(out: Path, path: Path) -> Path:
    """``path`` unchanged when it stays inside ``out``; else :class:`UnsafePath`."""
    if "\x00" in str(path):
        raise UnsafePath(f"refused to write {str(path)!r}: the path contains a NUL character")
    root = Path(out).resolve()
    target = Path(path).resolve()
    if target != root and not target.is_relative_to(root):
        raise UnsafePath(f"refused to write {path}: it is outside the output folder {root}")
    return path


def without_links(out: Path, path: Path) -> Path:
    """``path`` unchanged when it is inside ``out`` and neither it nor a folder between ``out`` and it is a
    symbolic link (missing parts are fine); else :class:`UnsafePath` naming the link and the fix. ``out`` itself
    may be a link: it is the operator's choice."""
    out, path = Path(out), Path(path)
    if "\x00" in str(path):
        return inside(out, path)  # UnsafePath
    try:
        parts = path.relative_to(out).parts
    except ValueError:
        raise UnsafePath(f"refused to write {path}: it is not under the output folder {out}") from None
    here = out
    for part in parts:
        here = here / part
        if os.path.islink(here):
            raise UnsafePath(
                f"refused to write {path}: {here} is a symbolic link (to {os.readlink(here)}) and fhir-adapter "
                f"never writes through one inside its output folder {out} — replace the link by a real "
                "folder (or file) holding what it points to, or remove it, and run again")
    return inside(out, path)  # no link on the way: what is left to refuse is a '..' leaving OUT


def real_folder(out: Path, folder: Path) -> Path:
    """``folder`` made when missing, after :func:`without_links`: a real folder inside ``out``."""
    without_links(out, folder)
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


def replaced_output(out: Path, path: Path) -> Path:
    """``path`` ready to be written anew: its folder a :func:`real_folder`; a symbolic link standing at ``path``
    itself is removed (what it points to is not touched), as a previous output would be replaced."""
    path = Path(path)
    real_folder(out, path.parent)
    if os.path.islink(path):
        os.unlink(path)
    return path


def open_no_link(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open(path, flags)`` never through a symbolic link: the open itself refuses to follow one
    (``O_NOFOLLOW``), and a link standing at ``path`` is removed — what it points to is not touched — as a previous
    file would be replaced. Returns the file descriptor."""
    path = Path(path)
    while True:
        try:
            return os.open(path, flags | os.O_NOFOLLOW, mode)
        except OSError as exc:
            if exc.errno != errno.ELOOP or not os.path.islink(path):
                raise
            os.unlink(path)  # the link, not what it points to


def open_new(path: Path) -> BinaryIO:
    """``path`` opened for writing anew (created, or emptied) by :func:`open_no_link`; the caller closes it."""
    return os.fdopen(open_no_link(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb")
