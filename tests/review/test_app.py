"""The review app over HTTP (Starlette's test client): pages, decisions, guards, the CLI command."""

from __future__ import annotations

import html
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.review.app import ReviewConfig, Workspace, create_app, serve
from fhir_adapter.review.store import DecisionStore
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study
from tests.feedkit import Feed, at
from tests.review.review_feed import C3, DAY1, SUBJECT, run_feed

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _form(client: TestClient, item_page: str) -> dict[str, str]:
    """What the item page's decision forms carry: the session's token and what they were made against (the
    item's last entry, the candidates shown)."""
    page = client.get(item_page).text
    return {name: re.search(rf'name="{name}" value="([^"]*)"', page).group(1)  # type: ignore[union-attr]
            for name in ("token", "seen_seq", "shown_hash")}


def _parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """From now on, every JSON text the app parses (``orjson.loads``), in order."""
    parsed: list[bytes] = []
    real = orjson.loads

    def recording(data: bytes) -> Any:
        parsed.append(bytes(data))
        return real(data)

    monkeypatch.setattr(orjson, "loads", recording)
    return parsed


@pytest.fixture
def reviewed(tmp_path: Path, study: Study) -> tuple[Path, ReviewConfig, TestClient]:
    out, _ = run_feed(tmp_path, study)
    cfg = ReviewConfig(results=out, reviewer="D. Manager")
    return out, cfg, TestClient(create_app(cfg), base_url="http://127.0.0.1")


def test_pages_show_subjects_items_candidates_and_progress(reviewed: tuple[Path, ReviewConfig, TestClient]) -> None:
    _, _, client = reviewed
    index = client.get("/").text
    assert "101-001" in index and "101-002" in index and "0 / 5" in index
    page = client.get(f"/s/{SUBJECT}").text
    assert "0 of 5 items reviewed" in page and "Complement C3" in page and 'id="endpoint-table"' in page
    item = client.get(f"/s/{SUBJECT}/W24/c3").text
    for text in ("closest", "155..183", "c3-w24a", "c3-w24b", "c3-late", "unit converted", "out of window",
                 "s pick</span>", "120 mg/dL"):
        assert text in item, text


def test_decisions_are_recorded_with_who_when_what_and_why(reviewed: tuple[Path, ReviewConfig, TestClient]) -> None:
    out, _, client = reviewed
    r = client.post(f"/s/{SUBJECT}/W24/c3/decide", follow_redirects=False,
                    data={**_form(client, f"/s/{SUBJECT}/W24/c3"), "action": "choose",
                          "candidate": "Observation/c3-w24b",
                          "reason": "day-169 sample haemolysed", "filter": "needs-review"})
    assert r.status_code == 303 and r.headers["location"].endswith("?filter=needs-review")
    [entry] = DecisionStore.under(out).read().entries
    assert (entry["reviewer"], entry["action"], entry["candidate"], entry["reason"]) == (
        "D. Manager", "choose", "Observation/c3-w24b", "day-169 sample haemolysed")
    assert [c["id"] for c in entry["shown"]["candidates"]] == [
        "Observation/c3-w24a", "Observation/c3-w24b", "Observation/c3-late"]
    assert "1 of 5 items reviewed" in client.get(f"/s/{SUBJECT}").text
    needs = client.get(f"/s/{SUBJECT}?filter=needs-review").text
    assert "/s/101-001/W24/c3" not in needs and "/s/101-001/BL/c3" in needs
    audit = client.get("/audit").text
    assert "D. Manager" in audit and "day-169 sample haemolysed" in audit and "chose another candidate" in audit
    # not available without a reason is refused and says why
    r = client.post(f"/s/{SUBJECT}/BL/c3/decide",
                    data={**_form(client, f"/s/{SUBJECT}/BL/c3"), "action": "not_available"})
    assert r.status_code == 200 and "needs a reason" in r.text
    assert len(DecisionStore.under(out).read().entries) == 1


def test_changes_in_the_ehr_after_a_decision_show_as_re_review(
        reviewed: tuple[Path, ReviewConfig, TestClient], study: Study) -> None:
    out, _, client = reviewed
    for visit, candidate in (("W24", "Observation/c3-w24b"), ("W12", "Observation/c3-w12")):
        client.post(f"/s/{SUBJECT}/{visit}/c3/decide", data={**_form(client, f"/s/{SUBJECT}/{visit}/c3"),
                                                              "action": "choose",
                                                              "candidate": candidate, "reason": "recheck"})
    run_feed(out.parent, study, amend_chosen=True, retract_w12=True)
    item = client.get(f"/s/{SUBJECT}/W24/c3").text
    assert 'id="status">re-review<' in item
    assert "Observation/c3-w24b changed in the EHR: version 1 → 2, value 1.2 → 1.3" in item
    page = client.get(f"/s/{SUBJECT}?filter=needs-review").text
    assert "/s/101-001/W24/c3" in page and 'id="orphans"' in page
    assert "Observation/c3-w12 is no longer a candidate" in page


def _value_used(page: str, visit: str, item: str) -> str:
    """The "Value used" cell (the third) of the item's row on the subject page, as text."""
    row = page.split(f'data-item="{visit}/{item}"')[1].split("</tr>")[0]
    cell = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)[2]
    return " ".join(re.sub(r"<[^>]+>", " ", cell).split())


def test_the_subject_page_shows_the_value_the_run_uses(
        reviewed: tuple[Path, ReviewConfig, TestClient], study: Study) -> None:
    """After the EHR amended a chosen result the page shows its current value (what the run used), flagged for
    re-review — not the value the reviewer saw when deciding."""
    out, _, client = reviewed
    client.post(f"/s/{SUBJECT}/W24/c3/decide", data={**_form(client, f"/s/{SUBJECT}/W24/c3"),
                                                          "action": "choose",
                                                          "candidate": "Observation/c3-w24b", "reason": "recheck"})
    client.post(f"/s/{SUBJECT}/W12/c3/decide", data={**_form(client, f"/s/{SUBJECT}/W12/c3"),
                                                          "action": "not_available",
                                                          "reason": "wrong patient"})
    page = client.get(f"/s/{SUBJECT}").text
    assert (_value_used(page, "W24", "c3"), _value_used(page, "W12", "c3")) == ("1.2 g/L", "not available")
    run_feed(out.parent, study, amend_chosen=True)   # the EHR corrects the chosen result: 1.3 g/L
    page = client.get(f"/s/{SUBJECT}").text
    assert _value_used(page, "W24", "c3") == "1.3 g/L EHR changed"
    assert _value_used(page, "BL", "c3") == "0.5 g/L"   # no decision: the rule's pick


def test_a_visit_s_unreviewed_items_can_be_accepted_at_once(
        reviewed: tuple[Path, ReviewConfig, TestClient]) -> None:
    out, cfg, client = reviewed
    client.post(f"/s/{SUBJECT}/BL/c3/decide",
                data={**_form(client, f"/s/{SUBJECT}/BL/c3"), "action": "query", "reason": "fasting?"})
    page = client.get(f"/s/{SUBJECT}").text
    assert 'id="accept-visit-BL"' in page and "for the 1 unreviewed item above" in page
    form = page.split("/BL/accept-unreviewed")[1].split("</form>")[0]
    items, shown = re.findall(r'name="item" value="([^"]+)"', form), re.findall(r'name="(shown-[^"]+)"', form)
    assert (items, shown) == (["sledai2k.rash"], ["shown-sledai2k.rash"])   # the item with a query is left alone
    r = client.post(f"/s/{SUBJECT}/BL/accept-unreviewed", follow_redirects=False,
                    data={"token": cfg.token, "item": items, **dict(re.findall(r'name="(shown-[^"]+)" value="([^"]*)"',
                                                                               form))})
    assert r.status_code == 303
    entries = DecisionStore.under(out).read().entries
    assert [(e["item"], e["action"]) for e in entries] == [("c3", "query"), ("sledai2k.rash", "accept")]
    assert entries[1]["shown"]["picked"] == "Observation/rash-bl" and entries[1]["reviewer"] == "D. Manager"
    assert 'id="accept-visit-BL"' not in client.get(f"/s/{SUBJECT}").text


ODD_IDS = ("101/009", "101 010", "101?011", "101#012", "101%013", "101%2F014", "101_2F009")


def test_every_subject_id_reaches_its_pages(tmp_path: Path, study: Study) -> None:
    """IDs with characters a URL path cannot carry as they are: a server decodes %2F before routing, so the
    app names a subject by its file name in paths; followed from the list, every link opens its page, and a
    decision through the form lands on the right subject."""
    f = Feed()
    for n, sid in enumerate(ODD_IDS):
        f.subject(f"p{n}", sid, name=f"Test Person{n}", mrn=f"MRN-{n}", birth="1980-01-01", day1=DAY1)
        f.obs(f"p{n}", C3, at(DAY1, -7), value=0.5 + n / 10, unit="g/L", id_=f"c3-{n}", meta={"versionId": "1"})
    out = tmp_path / "out"
    log = RunLog()
    assert run(FileSource(f.write(tmp_path / "feed"), log), study, out, log).subjects == len(ODD_IDS)
    cfg = ReviewConfig(results=out, reviewer="D. Manager")
    client = TestClient(create_app(cfg), base_url="http://127.0.0.1")
    index = client.get("/").text
    links = re.findall(r'<td><a href="(/s/[^"?]+)">([^<]+)</a>', index)
    assert sorted(html.unescape(sid) for _, sid in links) == sorted(ODD_IDS)
    for link, shown in links:
        sid = html.unescape(shown)
        page = client.get(link)
        assert page.status_code == 200 and f"Subject {shown}" in page.text, (sid, link)
        item_link = re.search(r'<a href="(/s/[^"?]+/BL/c3)">', page.text)
        assert item_link, (sid, page.text)
        item = client.get(item_link.group(1))
        assert item.status_code == 200 and f"c3-{ODD_IDS.index(sid)}" in item.text, sid
        r = client.post(item_link.group(1) + "/decide", follow_redirects=False,
                        data={**_form(client, item_link.group(1)), "action": "accept"})
        assert r.status_code == 303, (sid, r.text)
    decided = [(e["subject_id"], e["visit"], e["item"]) for e in DecisionStore.under(out).read().entries]
    assert sorted(decided) == sorted((sid, "BL", "c3") for sid in ODD_IDS)


def test_foreign_posts_and_hosts_are_refused(reviewed: tuple[Path, ReviewConfig, TestClient]) -> None:
    out, cfg, client = reviewed
    r = client.post(f"/s/{SUBJECT}/BL/c3/decide", data={"token": "from-another-page", "action": "accept"})
    assert r.status_code == 403
    assert TestClient(create_app(cfg), base_url="http://rebound.example").get("/").status_code == 400
    assert not DecisionStore.under(out).path.exists()


def test_no_page_can_be_framed_by_another_site(reviewed: tuple[Path, ReviewConfig, TestClient]) -> None:
    """Clickjacking: every response, refusals and errors included, forbids framing (docs/review.md)."""
    out, cfg, client = reviewed
    item = f"/s/{SUBJECT}/BL/c3"
    responses = [client.get("/"), client.get(f"/s/{SUBJECT}"), client.get(item), client.get("/audit"),
                 client.get(f"/s/{SUBJECT}/BL/no-such-item"),
                 client.post(item + "/decide", data={"token": "from-another-page", "action": "accept"}),
                 client.post(item + "/decide", follow_redirects=False,
                             data={**_form(client, item), "action": "accept"}),
                 TestClient(create_app(cfg), base_url="http://rebound.example").get("/")]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 404, 403, 303, 400]
    path = DecisionStore.under(out).path
    path.write_bytes(path.read_bytes().replace(b'"accept"', b'"choose"'))
    responses.append(client.get("/"))
    assert responses[-1].status_code == 500
    for r in responses:
        assert r.headers["x-frame-options"] == "DENY", r.request.url
        assert r.headers["content-security-policy"] == "frame-ancestors 'none'", r.request.url


def test_a_form_made_on_an_entry_the_file_does_not_hold_is_out_of_date(
        reviewed: tuple[Path, ReviewConfig, TestClient]) -> None:
    """A seen_seq past the item's latest entry (a page from another decision file, a forged form) is a 409 like
    any out-of-date page, not an internal error; nothing is recorded."""
    out, _, client = reviewed
    item = f"/s/{SUBJECT}/BL/c3"
    r = client.post(item + "/decide", data={**_form(client, item), "seen_seq": "7", "action": "query", "reason": "hi"})
    assert r.status_code == 409 and "entry #7 of the item, which the decision file does not hold" in r.text
    assert "its latest entry for the item is none" in r.text and f'href="{item}"' in r.text
    client.post(item + "/decide", data={**_form(client, item), "action": "accept"})
    r = client.post(item + "/decide", data={**_form(client, item), "seen_seq": "2", "action": "accept"})
    assert r.status_code == 409 and "its latest entry for the item is #1" in r.text
    for forged in ("²", "9" * 5000):  # a digit int() cannot read, a number past Python's digit limit: 400, not 500
        r = client.post(item + "/decide", data={**_form(client, item), "seen_seq": forged, "action": "accept"})
        assert r.status_code == 400 and "reload the page and decide again" in r.text
    assert [e["seq"] for e in DecisionStore.under(out).read().entries] == [1]


def test_a_tampered_decision_file_is_shown_not_ignored(reviewed: tuple[Path, ReviewConfig, TestClient]) -> None:
    out, _, client = reviewed
    client.post(f"/s/{SUBJECT}/BL/c3/decide", data={**_form(client, f"/s/{SUBJECT}/BL/c3"), "action": "accept"})
    path = DecisionStore.under(out).path
    path.write_bytes(path.read_bytes().replace(b'"accept"', b'"choose"'))
    r = client.get(f"/s/{SUBJECT}")
    assert r.status_code == 500 and "does not match its hash" in r.text


def test_cli_review_serves_on_localhost_and_prints_the_url(tmp_path: Path, study: Study) -> None:
    out, _ = run_feed(tmp_path, study)
    proc = subprocess.Popen([sys.executable, "-m", "fhir_adapter.cli.commands", "review", "--results", str(out),
                             "--reviewer", "D. Manager"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line
        page = httpx.get(m.group(0), timeout=10)  # at once: the socket listens before the URL is printed
        assert page.status_code == 200 and "reviewing as <strong id=\"reviewer\">D. Manager</strong>" in page.text
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_url_is_announced_once_the_socket_listens(tmp_path: Path, study: Study) -> None:
    """A browser (or script) opening the printed URL at once is queued, not refused: CI once saw
    "Connection refused" because the socket was bound but not yet listening when the URL was printed."""
    import socket

    out, _ = run_feed(tmp_path, study)

    class Connected(Exception):
        pass

    def connect(url: str) -> None:
        port = int(re.search(r":(\d+)/$", url).group(1))  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            raise Connected

    with pytest.raises(Connected):
        serve(ReviewConfig(results=out, reviewer="D. Manager"), on_ready=connect)


def test_cli_review_stopped_with_ctrl_c_ends_normally(tmp_path: Path, study: Study) -> None:
    out, _ = run_feed(tmp_path, study)
    proc = subprocess.Popen([sys.executable, "-m", "fhir_adapter.cli.commands", "review", "--results", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        m = re.search(r"http://127\.0\.0\.1:\d+/", proc.stdout.readline())
        assert m
        assert httpx.get(m.group(0), timeout=10).status_code == 200  # serving: its signal handlers are in place
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "Aborted" not in stderr and stderr == ""
    assert stdout.strip() == f"review app stopped; the decisions are in {out / 'state' / 'review-decisions.jsonl'}"


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_cli_review_port_out_of_range_is_a_usage_error(tmp_path: Path, port: str) -> None:
    (tmp_path / "review" / "candidates").mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "fhir_adapter.cli.commands", "review", "--results", str(tmp_path),
                        "--port", port], capture_output=True, text=True, timeout=60)
    assert r.returncode == 64 and "Invalid value for '--port'" in r.stderr, r.stderr
    assert "internal error" not in r.stderr


def test_cli_review_needs_a_run_first(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "fhir_adapter.cli.commands", "review", "--results", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "run `fhir-adapter run" in r.stderr


def test_the_endpoint_table_is_parsed_once_and_again_when_a_run_replaced_it(
        reviewed: tuple[Path, ReviewConfig, TestClient], monkeypatch: pytest.MonkeyPatch) -> None:
    """results/study.json holds every subject (23 MB for 340): a subject page does not parse it each time, and
    never shows a replaced one's values."""
    out, _, client = reviewed
    study = orjson.loads((out / "results" / "study.json").read_bytes())
    parsed = _parses(monkeypatch)
    path = out / "results" / "study.json"
    first = client.get(f"/s/{SUBJECT}").text
    client.get(f"/s/{SUBJECT}")
    assert len([p for p in parsed if len(p) == path.stat().st_size]) == 1
    row = next(s for s in study["subjects"] if s["subject_id"] == SUBJECT)
    row["visits"] = [{**row["visits"][0], "visit": "W999-replaced"}]
    new = out / "results" / "study.json.new"
    new.write_bytes(orjson.dumps(study))
    os.replace(new, path)   # as a run moves its results in: a new file
    page = client.get(f"/s/{SUBJECT}").text
    assert 'data-visit="W999-replaced"' in page and 'data-visit="W999-replaced"' not in first


def test_a_subject_page_parses_that_subject_only_and_nothing_is_kept_as_objects(
        reviewed: tuple[Path, ReviewConfig, TestClient], monkeypatch: pytest.MonkeyPatch) -> None:
    """The app keeps of each candidates file only what the subjects' list needs, as compact JSON (app.py
    Workspace): a subject's page reads and parses that subject's file, not every subject's, and the list's
    progress counts equal those of the subject's page."""
    out, cfg, client = reviewed
    files = {p.stem: p.read_bytes() for p in (out / "review" / "candidates").glob("*.json")}
    assert SUBJECT in files and len(files) == 2
    other = next(sid for sid in files if sid != SUBJECT)
    r = client.post(f"/s/{SUBJECT}/W24/c3/decide", follow_redirects=False,
                    data={**_form(client, f"/s/{SUBJECT}/W24/c3"), "action": "accept", "reason": ""})
    assert r.status_code == 303
    index = client.get("/").text   # every file read once
    assert "1 / 5" in index and "0 / 1" in index
    parsed = _parses(monkeypatch)
    assert "1 of 5 items reviewed" in client.get(f"/s/{SUBJECT}").text
    assert files[SUBJECT] in parsed and files[other] not in parsed
    ws = Workspace(cfg)
    first, again = ws.subject(SUBJECT), ws.subject(SUBJECT)
    assert first == again == orjson.loads(files[SUBJECT]) and first is not again and ws.subject("nobody") is None
    assert [x.subject_id for x in ws.listings()] == sorted(files)
    assert all(type(c) is bytes for x in ws.listings() for c in x.candidates.values())


def test_the_subjects_list_compares_an_items_candidates_with_its_decision_once(
        reviewed: tuple[Path, ReviewConfig, TestClient], monkeypatch: pytest.MonkeyPatch) -> None:
    """The list's progress needs each decided item's candidates compared with its decision: parsed on the first
    request after the decision (or after a run replaced the file), not on every request."""
    _, _, client = reviewed
    for visit, item in (("W24", "c3"), ("BL", "c3")):
        r = client.post(f"/s/{SUBJECT}/{visit}/{item}/decide", follow_redirects=False,
                        data={**_form(client, f"/s/{SUBJECT}/{visit}/{item}"), "action": "accept", "reason": ""})
        assert r.status_code == 303
    parsed = _parses(monkeypatch)
    assert "2 / 5" in client.get("/").text
    compared = len(parsed)
    assert compared >= 2   # the two decided items' candidates
    assert "2 / 5" in client.get("/").text and len(parsed) == compared   # nothing parsed again
    r = client.post(f"/s/{SUBJECT}/W24/c3/decide", follow_redirects=False,
                    data={**_form(client, f"/s/{SUBJECT}/W24/c3"), "action": "query", "reason": "check the unit"})
    assert r.status_code == 303
    del parsed[:]
    index = client.get("/").text
    assert "1 / 5" in index   # a query raised after the decision: compared again, and not reviewed
    assert len(parsed) == 1


def test_choosing_another_candidate_needs_a_reason_accepting_the_pick_does_not(
        reviewed: tuple[Path, ReviewConfig, TestClient]) -> None:
    out, _, client = reviewed
    url = f"/s/{SUBJECT}/W24/c3"
    page = client.get(url).text
    assert re.search(r'<input type="text" name="reason" id="choose-reason" size="40" required>', page)
    assert re.search(r'id="accept" formnovalidate', page)  # the browser asks for a reason only to choose
    r = client.post(url + "/decide", data={**_form(client, url), "action": "choose",
                                            "candidate": "Observation/c3-w24b", "reason": "  "})
    assert r.status_code == 200 and "another candidate than the rule&#39;s pick needs a reason" in r.text
    assert DecisionStore.under(out).read().entries == []
    r = client.post(url + "/decide", follow_redirects=False,
                    data={**_form(client, url), "action": "accept", "reason": ""})
    assert r.status_code == 303
    assert [(e["action"], e["reason"]) for e in DecisionStore.under(out).read().entries] == [("accept", "")]


def test_a_decision_from_a_stale_page_is_refused(reviewed: tuple[Path, ReviewConfig, TestClient],
                                                 study: Study) -> None:
    """Two reviewers on one item: the one whose page is older than the other's decision (or query), or than
    the candidates a run wrote since, is told to reload; nothing of theirs is recorded."""
    out, cfg, client = reviewed
    w24, bl = f"/s/{SUBJECT}/W24/c3", f"/s/{SUBJECT}/BL/c3"
    a_w24, a_bl = _form(client, w24), _form(client, bl)   # reviewer A opens two items
    # reviewer B chooses another candidate at W24 and raises a query at BL
    client.post(w24 + "/decide", data={**_form(client, w24), "action": "choose",
                                        "candidate": "Observation/c3-w24b", "reason": "day-169 sample haemolysed"})
    client.post(bl + "/decide", data={**_form(client, bl), "action": "query",
                                       "reason": "fasting sample?"})
    store = DecisionStore.under(out)
    assert [e["seq"] for e in store.read().entries] == [1, 2]
    # A's stale accept would replace B's newer choice; A's stale accept at BL would close B's query
    r = client.post(w24 + "/decide", data={**a_w24, "token": cfg.token, "action": "accept"})
    assert r.status_code == 409
    assert "changed since you opened it" in r.text and "#1 choose by D. Manager" in r.text
    assert "Reload" in r.text and f'href="{w24}"' in r.text
    r = client.post(bl + "/decide", data={**a_bl, "token": cfg.token, "action": "accept"})
    assert r.status_code == 409 and "#2 query by D. Manager" in r.text and "fasting sample?" in r.text
    current = store.read().current()
    assert len(store.read().entries) == 2
    assert current[(SUBJECT, "W24", "c3")]["candidate"] == "Observation/c3-w24b"
    assert current[(SUBJECT, "BL", "c3")]["action"] == "query"
    # reloaded, A decides on what B did; the decision records what A was shown and the entry it was made on
    r = client.post(bl + "/decide", follow_redirects=False,
                    data={**_form(client, bl), "action": "accept"})
    assert r.status_code == 303
    entry = store.read().entries[-1]
    assert (entry["seq"], entry["seen_seq"], entry["shown"]["picked"]) == (3, 2, "Observation/c3-bl")
    # a run replaced the candidates since A opened W24: refused too
    a_w24 = _form(client, w24)
    run_feed(out.parent, study, amend_chosen=True)
    r = client.post(w24 + "/decide", data={**a_w24, "token": cfg.token, "action": "accept"})
    assert r.status_code == 409 and "the candidates are not the ones you were shown" in r.text
    # a form that does not say what it was made against is refused
    r = client.post(w24 + "/decide", data={"token": cfg.token, "action": "accept"})
    assert r.status_code == 400 and "reload the page" in r.text
    assert len(store.read().entries) == 3


def test_accepting_a_visit_from_a_stale_page_is_refused(reviewed: tuple[Path, ReviewConfig, TestClient]) -> None:
    out, cfg, client = reviewed
    page = client.get(f"/s/{SUBJECT}").text
    form = page.split("/BL/accept-unreviewed")[1].split("</form>")[0]
    shown = dict(re.findall(r'name="(shown-[^"]+)" value="([^"]*)"', form))
    rash = f"/s/{SUBJECT}/BL/sledai2k.rash"
    client.post(rash + "/decide", data={**_form(client, rash),
                                         "action": "not_available", "reason": "not examined"})
    r = client.post(f"/s/{SUBJECT}/BL/accept-unreviewed",
                    data={"token": cfg.token, "item": ["c3", "sledai2k.rash"], **shown})
    assert r.status_code == 409 and "sledai2k.rash changed since you opened the page" in r.text
    assert [e["action"] for e in DecisionStore.under(out).read().entries] == ["not_available"]


def test_a_decision_the_disk_has_no_room_for_says_it_was_not_recorded(
        reviewed: tuple[Path, ReviewConfig, TestClient], monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while the decision file is written: 507 and "NOT recorded", not a bare 500 — the reviewer must
    know the decision is lost."""
    import errno

    out, _, client = reviewed

    def full(self: DecisionStore, *a: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DecisionStore, "append", full)
    monkeypatch.setattr(DecisionStore, "append_many", full)
    r = client.post(f"/s/{SUBJECT}/W24/c3/decide", follow_redirects=False,
                    data={**_form(client, f"/s/{SUBJECT}/W24/c3"), "action": "accept"})
    assert r.status_code == 507 and "your decision was NOT recorded: No space left on device" in html.unescape(r.text)
    assert "Free space on that disk" in r.text
    # accepting a visit's unreviewed items at once: the same
    _, cfg, _ = reviewed
    form = client.get(f"/s/{SUBJECT}").text.split("/BL/accept-unreviewed")[1].split("</form>")[0]
    r = client.post(f"/s/{SUBJECT}/BL/accept-unreviewed", follow_redirects=False,
                    data={"token": cfg.token, "item": re.findall(r'name="item" value="([^"]+)"', form),
                          **dict(re.findall(r'name="(shown-[^"]+)" value="([^"]*)"', form))})
    assert r.status_code == 507 and "NOT recorded" in r.text
    assert not DecisionStore.under(out).path.exists() or not DecisionStore.under(out).read().entries
