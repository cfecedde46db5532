"""The review decisions: an append-only, hash-chained JSON Lines file (``OUT/state/review-decisions.jsonl``).

* **Append-only**: a decision is never changed or removed; a later decision on the same subject/visit/item
  supersedes the earlier one for the runs, and both stay in the file (the audit trail).
* **Hash chain**: each entry carries ``prev`` (the ``hash`` of the entry before it, :data:`GENESIS` for the
  first) and ``hash`` = SHA-256 over its canonical JSON without ``hash``. Editing, deleting or reordering
  an entry breaks the chain at that line; :meth:`DecisionStore.read` reports where (:class:`TamperedError`).
* **Concurrent reviewers**: an append takes an exclusive ``flock`` on the file, reads the chain's head,
  writes one line and ``fsync``\\s before releasing it, so two reviewers writing at once both land, chained.
* **Stale pages**: a decision made from a page carries ``seen_seq``, the number of the item's latest entry
  when the page was made (0: none); an append refuses it (:class:`StaleError`, under the lock) when another
  entry on the item came since, so a reviewer never silently replaces a newer decision or closes a query
  they did not see. The app also compares the candidates shown with the current ones (:func:`shown_hash`).
* **A crash mid-write** leaves at most a torn last line (no newline at the end). Reading reports it
  (``torn``) and keeps every complete entry before it; the next append moves the torn bytes to
  ``<file>.torn-<UTC time>`` (kept for inspection) before writing, so the chain goes on intact. A last line
  that is a whole entry and only lacks its line end (a text editor's save) is an entry, not torn.

What the chain does not prove: who typed the name (no authentication, no e-signature), and that nobody
removed the *last* entries and rewrote nothing else (keep copies of the file; docs/review.md).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from fhir_adapter.safe_paths import real_folder, without_links

GENESIS = "0" * 64
ACTIONS = ("accept", "choose", "not_available", "query")
Action = Literal["accept", "choose", "not_available", "query"]
FILE_NAME = "review-decisions.jsonl"


class TamperedError(Exception):
    """The decision file was changed after it was written: the line and what is wrong."""


SHOWN_KEYS = ("rule", "window", "target_day", "picked", "candidates")


def shown_of(entry: dict[str, Any]) -> dict[str, Any]:
    """What a reviewer is shown of an item's candidates entry (and what a decision records as ``shown``)."""
    return {k: entry.get(k) for k in SHOWN_KEYS}


def shown_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of :func:`shown_of` ``entry``: a form carries it to tell whether the candidates changed since."""
    return hashlib.sha256(orjson.dumps(shown_of(entry), option=orjson.OPT_SORT_KEYS)).hexdigest()


class DecisionError(ValueError):
    """A decision that cannot be recorded (missing reason, unknown action…)."""


def default_reviewer() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class StaleError(DecisionError):
    """A decision made from a page older than the item's latest entry."""


@dataclass
class Chain:
    """What :meth:`DecisionStore.read` found."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    torn: str | None = None  # description of a torn last line, if any

    @property
    def head(self) -> str:
        return self.entries[-1]["hash"] if self.entries else GENESIS

    def latest(self, subject_id: str, visit: str, item: str) -> dict[str, Any] | None:
        """The item's latest entry (a decision or a query), None when it has none."""
        key = (subject_id, visit, item)
        return next((e for e in reversed(self.entries) if (e["subject_id"], e["visit"], e["item"]) == key), None)

    def current(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        """Per (subject, visit, item) the latest decision that settles the value (accept, choose, not
        available), with ``open_query`` set to a query raised after it; else the latest query."""
        out: dict[tuple[str, str, str], dict[str, Any]] = {}
        for e in self.entries:
            key = (e["subject_id"], e["visit"], e["item"])
            prev = out.get(key)
            if e["action"] == "query":
                if prev is not None and prev["action"] != "query":
                    out[key] = {**prev, "open_query": e}
                else:
                    out[key] = e
            else:
                out[key] = e
        return out


class DecisionStore:
    def __init__(self, path: Path, root: Path | None = None) -> None:
        """``root``: the folder below which no symbolic link is followed to write ``path`` (default its folder)."""
        self.path = Path(path)
        self.root = Path(root) if root is not None else self.path.parent
        self._cache: tuple[tuple[int, int, int], Chain] | None = None

    @classmethod
    def under(cls, out: Path, state_dir: Path | None = None) -> DecisionStore:
        """The decision file of the results folder ``out`` (``OUT/state/``), or in ``state_dir`` when given."""
        if state_dir is not None:
            return cls(Path(state_dir) / FILE_NAME, state_dir)
        return cls(Path(out) / "state" / FILE_NAME, out)

    def check_writable(self) -> None:
        """:class:`~fhir_adapter.job.outpaths.UnsafePath` when the decision file or a folder between
        :attr:`root` and it is a symbolic link: decisions are appended to a real file, never through a link
        (and a link cannot be replaced: the decisions are in what it points to)."""
        without_links(self.root, self.path)

    # -- reading -------------------------------------------------------------------------------------
    def read(self) -> Chain:
        """Every complete entry, verified; raises :class:`TamperedError` when the chain is broken."""
        if not self.path.exists():
            return Chain()
        return self._parse(self.path.read_bytes())

    def read_cached(self) -> Chain:
        """:meth:`read`, verified again only when the file changed (size or modification time)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return Chain()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.read())
        return self._cache[1]

    def _parse(self, data: bytes) -> Chain:
        chain = Chain()
        if not data:
            return chain
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        if tail and _whole_entry(tail):  # only its line end is missing (an editor's save): an entry, not torn
            lines.append(tail)
            tail = b""
        if tail:
            chain.torn = (f"{self.path}: the last line ({len(tail)} bytes) is incomplete — a write was "
                          "interrupted; the entries before it are intact, the next decision moves it aside")
        prev = GENESIS
        for n, line in enumerate(lines, start=1):
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise TamperedError(f"{self.path}:{n}: not a JSON entry — the file was edited; restore it "
                                    "from a copy") from None
            if not isinstance(entry, dict) or entry.get("prev") != prev:
                raise TamperedError(f"{self.path}:{n}: the hash chain is broken (an entry before it was changed, "
                                    "removed or reordered) — restore the file from a copy")
            if entry.get("hash") != entry_hash(entry):
                raise TamperedError(f"{self.path}:{n}: the entry does not match its hash (it was edited after it "
                                    "was written) — restore the file from a copy")
            if (problem := _not_a_decision(entry)) is not None:
                raise TamperedError(f"{self.path}:{n}: {problem} — the review app never writes such an entry; "
                                    "restore the file from a copy")
            prev = entry["hash"]
            chain.entries.append(entry)
        return chain

    # -- writing -------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[int]:
        self.check_writable()
        real_folder(self.root, self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def append(self, decision: dict[str, Any]) -> dict[str, Any]:
        """Record one decision (see :func:`new_decision`); returns the entry as written, chained."""
        return self.append_many([decision])[0]

    def append_many(self, decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Record several decisions under one lock, chained in order (all or, after a crash, a prefix)."""
        with self._locked() as fd:
            data = _read_all(fd)
            chain = self._parse(data)
            if chain.torn:
                keep = data.rfind(b"\n") + 1
                stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
                self.path.with_name(f"{self.path.name}.torn-{stamp}").write_bytes(data[keep:])
                os.ftruncate(fd, keep)
            for decision in decisions:
                if decision.get("seen_seq") is not None:
                    stale_check(chain, decision)
            prev, seq, written, lines = chain.head, len(chain.entries), [], []
            for decision in decisions:
                seq += 1
                entry = {**decision, "seq": seq, "prev": prev}
                entry["hash"] = prev = entry_hash(entry)
                written.append(entry)
                lines.append(orjson.dumps(entry, option=orjson.OPT_SORT_KEYS) + b"\n")
            os.lseek(fd, 0, os.SEEK_END)
            # a whole last entry saved without its line end (chain.torn is None then) gets one first
            end = b"\n" if data and not data.endswith(b"\n") and not chain.torn else b""
            _write_all(fd, end + b"".join(lines))
            os.fsync(fd)
        return written


def _whole_entry(line: bytes) -> bool:
    """A last line without its line end that is nonetheless a whole entry (JSON matching its hash)."""
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(entry, dict) and entry.get("hash") == entry_hash(entry)


def _not_a_decision(entry: dict[str, Any]) -> str | None:
    """What makes a hash-valid entry no decision a run can apply (a key missing or of the wrong type, an unknown
    action): everything :mod:`fhir_adapter.review.apply` reads of it."""
    missing = [k for k in ("subject_id", "visit", "item", "action", "reviewer", "at")
               if not isinstance(entry.get(k), str)]
    if not isinstance(entry.get("seq"), int) or isinstance(entry.get("seq"), bool):
        missing.append("seq")
    if missing:
        return f"the entry has no {', '.join(missing)}"
    if entry["action"] not in ACTIONS:
        return f"unknown action '{entry['action']}' (one of {', '.join(ACTIONS)})"
    shown = entry.get("shown")
    if not isinstance(shown, dict) or not isinstance(shown.get("candidates"), list) \
            or not all(isinstance(c, dict) and isinstance(c.get("id"), str) for c in shown["candidates"]):
        return "the entry has no 'shown' with the candidates the reviewer saw"
    if entry["action"] in ("accept", "choose") and not isinstance(entry.get("candidate"), str):
        return f"the entry has no candidate for its action '{entry['action']}'"
    return None


def stale_check(chain: Chain, decision: dict[str, Any]) -> None:
    """:class:`StaleError` when the item got an entry after the one the decision was made against, or when the
    decision was made on an entry of the item that the file does not hold (a page from another decision file,
    or a forged form): refused as out of date, never an internal error."""
    latest = chain.latest(decision["subject_id"], decision["visit"], decision["item"])
    if (latest["seq"] if latest else 0) == decision["seen_seq"]:
        return
    if latest is None or latest["seq"] < decision["seen_seq"]:   # made on an entry this file does not hold
        raise StaleError(
            f"{decision['subject_id']} {decision['visit']} {decision['item']}: the page was made on entry "
            f"#{decision['seen_seq']} of the item, which the decision file does not hold (its latest entry for "
            f"the item is {'#' + str(latest['seq']) if latest else 'none'}: the page came from another or a "
            "replaced decision file). Reload the page, look at it and decide again; nothing was recorded.")
    raise StaleError(
        f"{decision['subject_id']} {decision['visit']} {decision['item']} changed since you opened it: "
        f"#{latest['seq']} {latest['action'].replace('_', ' ')} by {latest['reviewer']} at {latest['at']}"
        f"{' — “' + latest['reason'] + '”' if latest.get('reason') else ''}. Reload the page, look at it "
        "and decide again; nothing was recorded.")


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    parts = []
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def new_decision(*, subject_id: str, visit: str, item: str, action: str, reviewer: str,
                 shown: dict[str, Any], candidate: str | None = None, reason: str = "",
                 at: dt.datetime | None = None, seen_seq: int | None = None) -> dict[str, Any]:
    """A decision as stored: who, when, what was shown (the candidates entry), what was decided and why;
    ``seen_seq``: the number of the item's latest entry the reviewer saw (0: none), checked when appended."""
    if action not in ACTIONS:
        raise DecisionError(f"unknown action '{action}': use one of {', '.join(ACTIONS)}")
    reason = reason.strip()
    if action in ("not_available", "query") and not reason:
        raise DecisionError(f"'{action}' needs a reason (free text): say why the value is not available, "
                            "or what the query asks")
    ids = [c["id"] for c in shown.get("candidates", [])]
    if action == "choose" and candidate is not None and candidate == shown.get("picked"):
        action = "accept"  # choosing the rule's own pick accepts it: nothing changed (review status accepted)
    if action == "choose" and not reason:
        # overruling the rule needs a why; accepting its pick does not (the rule is the why)
        raise DecisionError("choosing another candidate than the rule's pick needs a reason (free text): say why "
                            "the rule's pick is not the visit's value")
    if action == "accept":
        candidate = shown.get("picked")
    if action in ("accept", "choose"):
        if candidate not in ids:
            raise DecisionError(f"candidate '{candidate}' is not among the values shown for {subject_id} "
                                f"{visit} {item}: {', '.join(ids)}")
    else:
        candidate = None
    if not reviewer.strip():
        raise DecisionError("a decision needs the reviewer's name")
    chosen = next((c for c in shown.get("candidates", []) if c["id"] == candidate), None)
    return {
        "at": (at or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
        "reviewer": reviewer.strip(),
        "subject_id": subject_id, "visit": visit, "item": item,
        "action": action, "candidate": candidate,
        "value": chosen["value"] if chosen else None,
        "unit": chosen["unit"] if chosen else None,
        "reason": reason,
        "shown": shown_of(shown),
        **({"seen_seq": seen_seq} if seen_seq is not None else {}),
    }
