"""The decision store: append-only, hash-chained, safe for concurrent reviewers and a crash mid-write."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_adapter.review.store import (
    GENESIS,
    DecisionError,
    DecisionStore,
    StaleError,
    TamperedError,
    entry_hash,
    new_decision,
)

SHOWN: dict[str, Any] = {
    "rule": "closest", "window": [155, 183], "target_day": 169, "picked": "Observation/a",
    "candidates": [{"id": "Observation/a", "value": "0.9", "unit": "g/L", "source": {"version": "1"}},
                   {"id": "Observation/b", "value": "1.2", "unit": "g/L", "source": {"version": "1"}}],
}


def decision(n: int = 0, action: str = "accept", reviewer: str = "R. One", **kw: Any) -> dict[str, Any]:
    return new_decision(subject_id=f"101-{n:03d}", visit="W24", item="c3", action=action, reviewer=reviewer,
                        shown=SHOWN, **kw)


def test_entries_are_chained_and_superseded_not_replaced(tmp_path: Path) -> None:
    store = DecisionStore(tmp_path / "state" / "review-decisions.jsonl")
    first = store.append(decision(1))
    second = store.append(decision(1, "choose", candidate="Observation/b", reason="first sample haemolysed"))
    chain = store.read()
    assert [e["seq"] for e in chain.entries] == [1, 2]
    assert first["prev"] == GENESIS and second["prev"] == first["hash"] and chain.head == second["hash"]
    current = chain.current()[("101-001", "W24", "c3")]
    assert current["action"] == "choose" and current["candidate"] == "Observation/b" and current["value"] == "1.2"
    assert current["reviewer"] == "R. One" and current["at"] and current["shown"]["picked"] == "Observation/a"
    # a query after a decision is kept with it, it does not replace the value decision
    store.append(decision(1, "query", reason="is the day-176 sample the right one?"))
    current = store.read().current()[("101-001", "W24", "c3")]
    assert current["action"] == "choose" and current["open_query"]["reason"].startswith("is the day-176")


@pytest.mark.parametrize(("kw", "message"), [
    ({"action": "not_available"}, "needs a reason"),
    ({"action": "query", "reason": "  "}, "needs a reason"),
    ({"action": "choose", "candidate": "Observation/zzz", "reason": "x"}, "not among the values shown"),
    ({"action": "choose", "candidate": "Observation/b"}, "another candidate than the rule's pick needs a reason"),
    ({"action": "choose", "candidate": "Observation/b", "reason": " \n"}, "needs a reason"),
    ({"action": "delete"}, "unknown action"),
    ({"action": "accept", "reviewer": " "}, "reviewer's name"),
])
def test_incomplete_decisions_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(DecisionError, match=message):
        decision(**kw)


def test_choosing_the_rules_own_pick_is_recorded_as_accepting_it() -> None:
    d = decision(1, "choose", candidate="Observation/a", reason="checked against the lab report")
    assert (d["action"], d["candidate"], d["value"], d["reason"]) == (
        "accept", "Observation/a", "0.9", "checked against the lab report")
    assert decision(1, "choose", candidate="Observation/b", reason="a")["action"] == "choose"
    # accepting the rule's pick (or choosing it) needs no reason: the rule is the why
    assert decision(1, "accept")["reason"] == decision(1, "choose", candidate="Observation/a")["reason"] == ""


@pytest.mark.parametrize("edit", ["value", "delete", "reorder", "garbage"])
def test_a_tampered_file_is_detected(tmp_path: Path, edit: str) -> None:
    store = DecisionStore(tmp_path / "d.jsonl")
    for n in range(4):
        store.append(decision(n))
    lines = store.path.read_bytes().splitlines(keepends=True)
    if edit == "value":
        e = orjson.loads(lines[1])
        e["reviewer"] = "Somebody Else"
        lines[1] = orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n"
    elif edit == "delete":
        del lines[1]
    elif edit == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        lines[2] = b"{not json\n"
    store.path.write_bytes(b"".join(lines))
    with pytest.raises(TamperedError, match=r"d\.jsonl:2|d\.jsonl:3"):
        store.read()
    with pytest.raises(TamperedError):  # nothing is appended to a broken chain either
        store.append(decision(9))


@pytest.mark.parametrize(("edit", "said"), [
    ("no-item", "the entry has no item"), ("unknown-action", "unknown action 'delete'"),
    # what a run reads of an entry besides: a missing one dropped the subject (a KeyError) instead of stopping
    ("no-shown", "the entry has no 'shown'"), ("shown-not-an-object", "the entry has no 'shown'"),
    ("no-seq", "the entry has no seq"), ("no-reviewer", "the entry has no reviewer"),
    ("no-candidate", "the entry has no candidate for its action 'accept'"),
])
def test_a_hash_valid_entry_that_is_no_decision_is_named_not_an_internal_error(tmp_path: Path, edit: str,
                                                                               said: str) -> None:
    """Written by a script that kept the chain (the app never writes one): a missing key was a KeyError, an
    unknown action failed a subject with the bare message 'delete'. Both name the file and line."""
    store = DecisionStore(tmp_path / "d.jsonl")
    store.append(decision(1))
    entry = decision(2)
    if edit == "no-item":
        del entry["item"]
    elif edit == "unknown-action":
        entry["action"] = "delete"
    elif edit == "no-shown":
        del entry["shown"]
    elif edit == "shown-not-an-object":
        entry["shown"] = "Observation/a"
    elif edit == "no-reviewer":
        del entry["reviewer"]
    elif edit == "no-candidate":
        entry["candidate"] = None
    prev = store.read().head
    forged = {**entry, "seq": 2, "prev": prev}
    if edit == "no-seq":
        del forged["seq"]
    forged["hash"] = entry_hash(forged)
    with store.path.open("ab") as fh:
        fh.write(orjson.dumps(forged, option=orjson.OPT_SORT_KEYS) + b"\n")
    with pytest.raises(TamperedError, match=rf"d\.jsonl:2: {said}"):
        store.read()


def test_a_last_entry_saved_without_its_line_end_is_an_entry_and_the_next_one_follows_it(tmp_path: Path) -> None:
    """An editor that saves without a final newline: the last decision was read as torn, so no run applied it
    (only review.torn_last_line said so), and the next decision moved it aside."""
    store = DecisionStore(tmp_path / "d.jsonl")
    store.append(decision(1))
    last = store.append(decision(2))
    store.path.write_bytes(store.path.read_bytes().rstrip(b"\n"))
    chain = store.read()
    assert chain.torn is None and chain.entries[-1] == last
    third = store.append(decision(3))
    chain = store.read()
    assert [e["seq"] for e in chain.entries] == [1, 2, 3] and chain.entries[-1] == third and chain.torn is None
    assert not list(tmp_path.glob("d.jsonl.torn-*"))


def _append_many(path: str, worker: int, n: int) -> None:
    store = DecisionStore(Path(path))
    for i in range(n):
        store.append(decision(i, reviewer=f"reviewer-{worker}"))


def test_concurrent_reviewers_on_one_file_all_land_chained(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    chain = DecisionStore(path).read()  # verifies every link
    assert len(chain.entries) == 100 and chain.torn is None
    assert [e["seq"] for e in chain.entries] == list(range(1, 101))
    assert {e["reviewer"] for e in chain.entries} == {f"reviewer-{w}" for w in range(4)}


def _crash_mid_write(path: str) -> None:
    """Write half of an entry line, then die without cleanup (as a killed process or a power cut would)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    line = orjson.dumps({**decision(7), "seq": 3}, option=orjson.OPT_SORT_KEYS)
    os.write(fd, line[: len(line) // 2])
    os._exit(9)


def test_a_crash_mid_write_leaves_earlier_entries_intact(tmp_path: Path) -> None:
    store = DecisionStore(tmp_path / "d.jsonl")
    store.append(decision(1))
    store.append(decision(2))
    p = multiprocessing.get_context("fork").Process(target=_crash_mid_write, args=(str(store.path),))
    p.start()
    p.join(timeout=30)
    assert p.exitcode == 9
    chain = store.read()
    assert [e["subject_id"] for e in chain.entries] == ["101-001", "101-002"]
    assert chain.torn and "incomplete" in chain.torn
    # the next decision moves the torn bytes aside and continues the chain
    store.append(decision(3))
    chain = store.read()
    assert chain.torn is None and [e["seq"] for e in chain.entries] == [1, 2, 3]
    aside = list(tmp_path.glob("d.jsonl.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b'{"action":"accept"')


def test_several_decisions_in_one_append_are_chained_in_order(tmp_path: Path) -> None:
    store = DecisionStore(tmp_path / "d.jsonl")
    store.append(decision(0))
    written = store.append_many([decision(n) for n in range(1, 4)])
    chain = store.read()
    assert chain.entries == [chain.entries[0], *written]
    assert [e["subject_id"] for e in chain.entries] == ["101-000", "101-001", "101-002", "101-003"]
    assert store.read_cached() is store.read_cached()  # verified once while the file is unchanged
    store.append(decision(4))
    assert len(store.read_cached().entries) == 5


def test_a_decision_made_against_an_older_entry_is_refused(tmp_path: Path) -> None:
    """The check runs under the file lock: two reviewers who saw the same entry cannot both land."""
    store = DecisionStore(tmp_path / "d.jsonl")
    store.append(decision(1, seen_seq=0))
    with pytest.raises(StaleError, match=r"changed since you opened it: #1 accept by R. One"):
        store.append(decision(1, "query", reason="fasting?", seen_seq=0))
    store.append(decision(2, seen_seq=0))   # another item: not concerned
    assert store.append(decision(1, "query", reason="fasting?", seen_seq=1))["seen_seq"] == 1
    with pytest.raises(StaleError):
        store.append_many([decision(3, seen_seq=0), decision(1, seen_seq=1)])   # all or nothing
    assert [e["seq"] for e in store.read().entries] == [1, 2, 3]
