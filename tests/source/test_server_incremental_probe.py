"""ServerSource incremental probes against a mocked server: batched per resource type, the adapter's own
results are no change, deletions come from type-level history only where the CapabilityStatement offers it, a
DELETE entry without the resource attributed through the last CRFs."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from fhir_adapter.fhir import ClientSettings, FhirClient, FhirError, FhirHttpError
from fhir_adapter.fhir.errors import FhirServerUnavailable
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.server import SUBJECT_SEARCHES, ServerSource
from fhir_adapter.source.server.deletion_owners import MAX_HISTORY_PAGES
from fhir_adapter.source.server.incremental import ChangeProbe
from fhir_adapter.study.load import Study
from fhir_adapter.terminology.codes import SID_RESULT

SINCE = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def bundle(resources: list[dict[str, Any]], kind: str = "searchset") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [{"resource": r} for r in resources]}


#: the shared types whose changes the probe also looks for: a subject's Specimens, the Medications named
SHARED_PROBES = {"Specimen": ("patient", "_lastUpdated"), "Medication": ("_lastUpdated",)}


def capability(history: bool, shared: bool = True) -> dict[str, Any]:
    interactions = [{"code": "search-type"}] + ([{"code": "history-type"}] if history else [])
    resources = [{"type": t, "interaction": interactions,
                  **({"searchParam": [{"name": "medication"}]} if t.startswith("Medication") else {})}
                 for t in SUBJECT_SEARCHES]
    if shared:
        resources += [{"type": t, "interaction": [{"code": "search-type"}],
                       "searchParam": [{"name": n} for n in names]} for t, names in SHARED_PROBES.items()]
    return {"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "resource": resources}]}


def patient_param(rtype: str) -> str:
    return SUBJECT_SEARCHES[rtype][0] if rtype in SUBJECT_SEARCHES else "patient"


def params_of(request: httpx.Request) -> httpx.QueryParams:
    """Search parameters of a GET, or of a POST [type]/_search form body (long code lists go as POST)."""
    if request.method == "POST" and request.url.path.endswith("/_search"):
        return httpx.QueryParams(request.content.decode())
    return request.url.params


def search_type(request: httpx.Request) -> str:
    return request.url.path.removesuffix("/_search").rsplit("/", 1)[-1]


def run_probe(study: Study, history: bool) -> tuple[set[str], list[httpx.Request], RunLog]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if path.endswith("/metadata"):
            return httpx.Response(200, json=capability(history))
        if path.endswith("/Observation/_history"):
            return httpx.Response(200, json=bundle([], "history") | {"entry": [
                {"request": {"method": "DELETE", "url": "Observation/gone"},
                 "resource": {"resourceType": "Observation", "id": "gone", "subject": {"reference": "Patient/p3"}}}]})
        if search_type(request) == "Observation" and "_history" not in path:
            return httpx.Response(200, json=bundle([
                # written by the adapter's last run: not a change of the EHR data
                {"resourceType": "Observation", "id": "r1", "subject": {"reference": "Patient/p1"},
                 "identifier": [{"system": SID_RESULT, "value": "x"}]},
                {"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/p2"}}]))
        return httpx.Response(200, json=bundle([]))

    client = FhirClient("https://ehr.example.org/fhir", settings=ClientSettings(),
                        transport=httpx.MockTransport(handler))
    log = RunLog()
    loop = asyncio.new_event_loop()
    source = ServerSource(client, study, log, since=SINCE, loop=loop)
    try:
        changed = source.run(ChangeProbe(client, source.plan, log, source.base, SINCE).changed({"p1", "p2", "p3"}))
    finally:
        source.close()
    return changed, seen, log


def test_probe_is_one_search_per_type_and_ignores_the_adapter_results(study: Study) -> None:
    changed, seen, log = run_probe(study, history=False)
    assert changed == {"p2"}
    searches = [r for r in seen if not r.url.path.endswith("/metadata")]
    # three patients, one search per resource type, and the shared types' (no Medication changed: no more)
    assert sorted(search_type(r) for r in searches) == sorted([*SUBJECT_SEARCHES, *SHARED_PROBES])
    obs = params_of(next(r for r in searches if search_type(r) == "Observation"))
    assert obs["patient"] == "Patient/p1,Patient/p2,Patient/p3"
    # to the millisecond, with ge: `gt` of a time cut to the second misses the rest of that second
    assert obs["_lastUpdated"] == "ge2026-11-01T00:00:00.000Z"
    specimens = params_of(next(r for r in searches if search_type(r) == "Specimen"))
    assert (specimens["patient"], specimens["_lastUpdated"]) == ("Patient/p1,Patient/p2,Patient/p3",
                                                                 "ge2026-11-01T00:00:00.000Z")
    assert "combo-code" in obs and "_include" not in obs
    assert not any("_history" in r.url.path for r in seen)
    assert any("no type-level history" in w["message"] for w in log.warnings)


def test_deletions_from_type_level_history_when_offered(study: Study) -> None:
    changed, seen, _ = run_probe(study, history=True)
    assert changed == {"p2", "p3"}
    hist = [r for r in seen if r.url.path.endswith("/Observation/_history")]
    assert len(hist) == 1 and hist[0].url.params["_since"] == "2026-11-01T00:00:00.000Z"


def probe_with(study: Study, handler: Any, pids: Iterable[str] = ("p1", "p2", "p3")
               ) -> tuple[ChangeProbe, set[str] | BaseException, FhirClient]:
    async def no_wait(_: float) -> None:
        return None

    client = FhirClient("https://ehr.example.org/fhir", settings=ClientSettings(max_attempts=2),
                        transport=httpx.MockTransport(handler), sleep=no_wait)
    loop = asyncio.new_event_loop()
    source = ServerSource(client, study, RunLog(), since=SINCE, loop=loop)
    probe = ChangeProbe(client, source.plan, RunLog(), source.base, SINCE, {"p1": "S-1", "p2": "S-2", "p3": "S-3"})
    outcome: set[str] | BaseException
    try:
        outcome = source.run(probe.changed(set(pids)))
    except FhirError as exc:
        outcome = exc
    finally:
        source.close()
    return probe, outcome, client


def test_a_probe_failing_for_one_patient_is_asked_again_per_patient_and_fails_that_patient_alone(
        study: Study) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=capability(False))
        if "p2" in params_of(request).get(patient_param(search_type(request)), ""):
            return httpx.Response(503, json={"resourceType": "OperationOutcome", "issue": []})
        if search_type(request) == "Procedure":
            return httpx.Response(200, json=bundle([
                {"resourceType": "Procedure", "id": "x", "subject": {"reference": "Patient/p3"}}]))
        return httpx.Response(200, json=bundle([]))

    probe, changed, client = probe_with(study, handler)
    assert changed == {"p3"}  # found by the per-patient probe of a group that failed
    assert set(probe.failed) == {"p2"} and isinstance(probe.failed["p2"], FhirHttpError)
    assert probe.failed["p2"].status == 503 and probe.failed["p2"].attempts == 2
    assert not client.breaker.is_open
    # p2's own probes, under its subject: one per type and its Specimens'
    assert client.stats.label("S-2").failures == len(SUBJECT_SEARCHES) + 1
    assert client.stats.label("S-1").failures == 0 and client.stats.label("S-1").requests > 0


def test_a_server_down_during_the_probes_still_opens_the_circuit_breaker(study: Study) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=capability(False))
        return httpx.Response(503, json={"resourceType": "OperationOutcome", "issue": []})

    _, outcome, client = probe_with(study, handler)
    assert isinstance(outcome, FhirServerUnavailable) and client.breaker.is_open


def crf(path: Path, *sources: tuple[str, str]) -> Path:
    path.write_text(json.dumps({"subject_id": path.stem, "findings": [
        {"item": "HGB", "source": {"resource_type": t, "id": i, "version": "1"}} for t, i in sources]}))
    return path


InstanceHistory = Callable[[str], httpx.Response]


def probe_deletions(study: Study, tmp_path: Path, *entries: dict[str, Any]) -> tuple[set[str], RunLog]:
    """A probe where nothing was updated and the Observation history lists ``entries``; the last CRFs: S-1 names
    Observation/o1, S-2 Observation/o2, S-3 none at hand."""
    changed, log, _ = probe_deletion_lookups(study, tmp_path, entries)
    return changed, log


def probe_deletion_lookups(study: Study, tmp_path: Path, entries: Iterable[dict[str, Any]],
                           instance: InstanceHistory | None = None, settings: ClientSettings | None = None
                           ) -> tuple[set[str], RunLog, list[str]]:
    """:func:`probe_deletions`, the instance history of ``Observation/<id>`` answered by ``instance(id)``
    (default: an empty history); also the instance-history paths requested."""
    looked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/metadata"):
            return httpx.Response(200, json=capability(True))
        if path.endswith("/Observation/_history"):
            return httpx.Response(200, json=bundle([], "history") | {"entry": list(entries)})
        if path.startswith("/fhir/Observation/") and path.endswith("/_history"):  # one resource's
            looked.append(path.removeprefix("/fhir/"))
            rid = path.split("/")[-2]
            return instance(rid) if instance is not None else httpx.Response(200, json=bundle([], "history"))
        return httpx.Response(200, json=bundle([]))

    async def no_wait(_: float) -> None:
        return None

    crf(tmp_path / "S-1.json", ("Observation", "o1"))
    crf(tmp_path / "S-2.json", ("Observation", "o2"))
    client = FhirClient("https://ehr.example.org/fhir", settings=settings or ClientSettings(),
                        transport=httpx.MockTransport(handler), sleep=no_wait)
    log = RunLog()
    loop = asyncio.new_event_loop()
    source = ServerSource(client, study, log, since=SINCE, loop=loop)
    probe = ChangeProbe(client, source.plan, log, source.base, SINCE, {"p1": "S-1", "p2": "S-2", "p3": "S-3"},
                        last_crf=lambda subject_id: tmp_path / f"{subject_id}.json")
    try:
        return source.run(probe.changed({"p1", "p2", "p3"})), log, looked
    finally:
        source.close()


def deleted_versions(rid: str, patient: str, *extra: dict[str, Any]) -> httpx.Response:
    """An instance history of a deleted Observation: the DELETE entry, then its version about ``patient``."""
    return httpx.Response(200, json={"resourceType": "Bundle", "type": "history", "entry": [
        {"request": {"method": "DELETE", "url": f"Observation/{rid}"}},
        {"resource": {"resourceType": "Observation", "id": rid, "subject": {"reference": f"Patient/{patient}"},
                      **{k: v for e in extra for k, v in e.items()}}}]})


def deletion(rid: str) -> dict[str, Any]:
    return {"request": {"method": "DELETE", "url": f"Observation/{rid}"}}


def test_a_delete_entry_without_the_resource_reads_again_the_subject_whose_last_crf_names_it(
        study: Study, tmp_path: Path) -> None:
    """A history DELETE entry carries no resource (FHIR R4 http.html#history, HAPI): its Type/id is matched to the
    last CRFs (before: the deletion was seen and dropped, and the subject's stale CRF was reused)."""
    changed, log = probe_deletions(study, tmp_path, {
        "fullUrl": "https://ehr.example.org/fhir/Observation/o2",
        "request": {"method": "DELETE", "url": "Observation/o2/_history/3"}, "response": {"status": "204"}})
    assert changed == {"p2"}
    assert log.counts["incremental.deleted"] == 1 and log.counts["incremental.deletion_subjects"] == 1
    assert not [w for w in log.warnings if w["rule"] == "incremental"]


def test_a_delete_entry_no_last_crf_names_reads_every_subject_again(study: Study, tmp_path: Path) -> None:
    changed, log = probe_deletions(study, tmp_path,
                                   {"request": {"method": "DELETE", "url": "Observation/o1"}},
                                   {"request": {"method": "DELETE", "url": "Observation/o9"}})
    assert changed == {"p1", "p2", "p3"}
    assert log.counts["incremental.deleted"] == 2 and log.counts["incremental.deletion_subjects"] == 3
    [warning] = [w for w in log.warnings if w["rule"] == "incremental"]
    assert "Observation/o9" in warning["message"] and "every enrolled subject is read again in full" \
        in warning["message"]


def test_a_delete_entry_naming_no_resource_reads_every_subject_again(study: Study, tmp_path: Path) -> None:
    changed, log = probe_deletions(study, tmp_path, {"request": {"method": "DELETE", "url": "Observation"}})
    assert changed == {"p1", "p2", "p3"}
    [warning] = [w for w in log.warnings if w["rule"] == "incremental"]
    assert "name no Type/id" in warning["message"]


def test_a_deletion_no_crf_names_is_attributed_through_its_instance_history(study: Study, tmp_path: Path) -> None:
    """Type-level history lists the whole server's deletions: the instance history of one no CRF names gives
    its patient: an enrolled one is read again alone, another patient's (or an adapter result) is ignored
    (before: any of them made every subject read again in full)."""
    owners = {"o7": "p3", "o8": "stranger"}

    def instance(rid: str) -> httpx.Response:
        if rid == "r1":
            return deleted_versions(rid, "p1", {"identifier": [{"system": SID_RESULT, "value": "x"}]})
        return deleted_versions(rid, owners[rid])

    changed, log, looked = probe_deletion_lookups(study, tmp_path, [deletion("o7"), deletion("o8"), deletion("r1")],
                                                  instance)
    assert changed == {"p3"}
    assert sorted(looked) == ["Observation/o7/_history", "Observation/o8/_history", "Observation/r1/_history"]
    assert log.counts["incremental.deletion_lookups"] == 3 and log.counts["incremental.deletions_ignored"] == 2
    assert log.counts["incremental.deletion_subjects"] == 1
    assert not [w for w in log.warnings if w["rule"] == "incremental"]


def test_an_instance_history_that_cannot_be_read_reads_every_subject_again(study: Study, tmp_path: Path) -> None:
    def instance(rid: str) -> httpx.Response:
        if rid == "o7":
            return deleted_versions(rid, "p3")
        return httpx.Response(500, json={"resourceType": "OperationOutcome", "issue": []})

    changed, log, looked = probe_deletion_lookups(study, tmp_path, [deletion("o7"), deletion("o8")], instance,
                                                  ClientSettings(max_attempts=2))
    assert changed == {"p1", "p2", "p3"} and set(looked) == {"Observation/o7/_history", "Observation/o8/_history"}
    assert log.counts["incremental.deletion_subjects"] == 3
    [warning] = [w for w in log.warnings if w["rule"] == "incremental"]
    assert "Observation/o8: its history could not be read" in warning["message"]
    assert "every enrolled subject is read again in full" in warning["message"]


def test_an_instance_history_naming_no_patient_reads_every_subject_again(study: Study, tmp_path: Path) -> None:
    def instance(rid: str) -> httpx.Response:
        return deleted_versions(rid, "p3", {"subject": {"reference": "Group/g1"}})

    changed, log, _ = probe_deletion_lookups(study, tmp_path, [deletion("o7")], instance)
    assert changed == {"p1", "p2", "p3"}
    [warning] = [w for w in log.warnings if w["rule"] == "incremental"]
    assert "Observation/o7: a version of it names no Patient of this server" in warning["message"]


def test_more_deletions_than_the_lookup_bound_read_every_subject_again(study: Study, tmp_path: Path) -> None:
    changed, log, looked = probe_deletion_lookups(
        study, tmp_path, [deletion("o7"), deletion("o8"), deletion("o9")],
        lambda rid: deleted_versions(rid, "stranger"), ClientSettings(max_deletion_lookups=2))
    assert changed == {"p1", "p2", "p3"} and looked == []  # none is read: every subject is read again anyway
    assert log.counts["incremental.deletion_lookups"] == 0
    [warning] = [w for w in log.warnings if w["rule"] == "incremental"]
    assert "3 deleted resource(s)" in warning["message"] and "client.max_deletion_lookups" in warning["message"]
    assert "every enrolled subject is read again in full" in warning["message"]


def paged_history(rid: str, pages: list[list[dict[str, Any]]]) -> InstanceHistory:
    """An instance history of ``Observation/<rid>`` in ``pages`` (entries), each but the last with a ``next``
    link; the first request gets the first page, each later one the next."""
    served = [0]

    def instance(asked: str) -> httpx.Response:
        assert asked == rid
        n = served[0]
        served[0] += 1
        link = [{"relation": "next", "url": f"https://ehr.example.org/fhir/Observation/{rid}/_history?page={n + 2}"}]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "history", "entry": pages[n],
                                         "link": link if n + 1 < len(pages) else []})

    return instance


def test_an_instance_history_is_followed_past_a_version_naming_nobody(study: Study, tmp_path: Path) -> None:
    """The newest version of a deleted resource may name no patient (its subject removed before the deletion),
    the older one on the next page does: that subject alone is read again (before: only the first page holding
    a version was read, and the deletion made every subject read again)."""
    pages = [[deletion("o7"), {"resource": {"resourceType": "Observation", "id": "o7", "status": "cancelled"}}],
             [{"resource": {"resourceType": "Observation", "id": "o7", "subject": {"reference": "Patient/p3"}}}]]
    changed, log, looked = probe_deletion_lookups(study, tmp_path, [deletion("o7")], paged_history("o7", pages))
    assert changed == {"p3"} and looked == ["Observation/o7/_history"] * 2
    assert log.counts["incremental.deletion_subjects"] == 1 and log.counts["incremental.deletions_ignored"] == 0
    assert not [w for w in log.warnings if w["rule"] == "incremental"]


def test_an_instance_history_is_read_at_most_five_pages(study: Study, tmp_path: Path) -> None:
    """Pages with no version naming a patient are followed at most :data:`MAX_HISTORY_PAGES` deep: then the
    deletion stays unattributable and every subject is read again."""
    pages = [[deletion("o7")]] * 8
    changed, log, looked = probe_deletion_lookups(study, tmp_path, [deletion("o7")], paged_history("o7", pages))
    assert changed == {"p1", "p2", "p3"} and len(looked) == MAX_HISTORY_PAGES == 5
    [warning] = [w for w in log.warnings if w["rule"] == "incremental"]
    assert "Observation/o7: its history lists no version of it in the first 5 pages" in warning["message"]


def test_a_version_naming_no_patient_with_none_naming_one_reads_every_subject_again(study: Study,
                                                                                   tmp_path: Path) -> None:
    pages = [[deletion("o7"), {"resource": {"resourceType": "Observation", "id": "o7", "status": "cancelled"}}]]
    changed, log, looked = probe_deletion_lookups(study, tmp_path, [deletion("o7")], paged_history("o7", pages))
    assert changed == {"p1", "p2", "p3"} and looked == ["Observation/o7/_history"]
    [warning] = [w for w in log.warnings if w["rule"] == "incremental"]
    assert "Observation/o7: a version of it names no Patient of this server" in warning["message"]


def test_a_refused_specimen_probe_is_warned_of_and_fails_no_subject(study: Study) -> None:
    """A server that declares the Specimen search but refuses it (400): warned once — a full run reads Specimens
    by id then — never each patient's read failure (every subject not processed)."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=capability(False))
        if search_type(request) == "Specimen":
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": []})
        if search_type(request) == "Procedure":
            return httpx.Response(200, json=bundle([
                {"resourceType": "Procedure", "id": "x", "subject": {"reference": "Patient/p3"}}]))
        return httpx.Response(200, json=bundle([]))

    probe, changed, _ = probe_with(study, handler)
    assert changed == {"p3"} and probe.failed == {}
    assert [w["message"] for w in probe.log.warnings if "Specimen" in w["message"]] == [
        "the server refuses the Specimen change search (400): a Specimen change alone is picked up by the next "
        "full run"]


def test_a_record_moved_to_a_patient_not_enrolled_reads_its_former_owner_again(study: Study, tmp_path: Path) -> None:
    """The probes search enrolled patients only; the type-level history lists the update of Observation/o1 under
    Patient/x9 (not enrolled): S-1, whose last CRF names o1, is read again."""
    moved = {"request": {"method": "PUT", "url": "Observation/o1"},
             "resource": {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/x9"}}}
    changed, log = probe_deletions(study, tmp_path, moved)
    assert changed == {"p1"} and log.counts["incremental.former_owner_subjects"] == 1


def test_a_specimen_probe_timing_out_for_many_patients_is_asked_again_per_patient(study: Study) -> None:
    """A Specimen probe for several patients that times out after its retries is asked again per patient, as
    every other probe (before: the timeout stopped the run as a server that is down)."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=capability(False))
        if search_type(request) == "Specimen" and "," in params_of(request).get("patient", ""):
            raise httpx.ReadTimeout("too slow", request=request)
        if search_type(request) == "Specimen" and params_of(request).get("patient") == "Patient/p2":
            return httpx.Response(200, json=bundle([
                {"resourceType": "Specimen", "id": "s2", "subject": {"reference": "Patient/p2"}}]))
        return httpx.Response(200, json=bundle([]))

    probe, changed, client = probe_with(study, handler)
    assert changed == {"p2"} and probe.failed == {} and not client.breaker.is_open


def test_a_server_refusing_a_change_search_reads_those_subjects_in_full_and_fails_none(study: Study) -> None:
    """A server that refuses `_lastUpdated` on Observation (400, also per patient: some EHRs do not offer it on
    every type) cannot say what changed: every patient counts as changed and is read in full by the searches a
    full run makes, with one warning — not every subject failed at every `--since last` run."""
    client_requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        client_requests.append(request)
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=capability(False))
        if search_type(request) == "Observation":
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "not-supported",
                 "diagnostics": "Unknown search parameter _lastUpdated"}]})
        return httpx.Response(200, json=bundle([]))

    probe, changed, client = probe_with(study, handler)
    assert changed == {"p1", "p2", "p3"} and probe.failed == {} and not client.breaker.is_open
    assert [w["message"][:56] for w in probe.log.warnings if "refuses" in w["message"]] == [
        "the server refuses the Observation change search (400): "]
    # asked for the group, then for each patient alone: once refused for one, not asked for the others again
    observation_probes = [r for r in client_requests if search_type(r) == "Observation"]
    assert 2 <= len(observation_probes) <= 4
    assert probe.log.counts["incremental.refused_subjects"] == 3


def test_the_probe_of_a_single_patient_failing_fails_that_subject_not_the_run(study: Study) -> None:
    """A group of one patient (a cohort of one, or the last of 21 patients) whose probe fails after its retries:
    that subject alone is not processed, as in a larger group (before: the failure ended the whole probe)."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=capability(False))
        if search_type(request) == "Observation":
            return httpx.Response(503, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json=bundle([]))

    probe, changed, client = probe_with(study, handler, pids=["p1"])
    assert changed == set() and set(probe.failed) == {"p1"} and not client.breaker.is_open


def test_one_patients_403_fails_that_patient_and_no_other_is_read_in_full(study: Study) -> None:
    """A 403 for one consent-restricted patient (or 404/410 for one merged or gone) is about that patient, not
    the search: that subject alone fails, the others' probes go on and nobody is read in full for it."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=capability(False))
        if "p2" in params_of(request).get(patient_param(search_type(request)), ""):
            return httpx.Response(403, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json=bundle([]))

    probe, changed, _ = probe_with(study, handler)
    assert changed == set() and set(probe.failed) == {"p2"} and probe.unknown == set()
    assert set(probe.refused) <= {"Specimen"}  # a Specimen probe refused for the group: warned, as documented


def test_a_specimen_probe_refused_only_per_patient_reads_nobody_in_full(study: Study) -> None:
    """The group's Specimen probe times out, each patient's is refused (400): as when the group's is refused — one
    warning, a Specimen change alone waits for the next full run, nobody read in full or failed."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=capability(False))
        if search_type(request) == "Specimen" and "," in params_of(request).get("patient", ""):
            raise httpx.ReadTimeout("too slow", request=request)
        if search_type(request) == "Specimen":
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json=bundle([]))

    probe, changed, _ = probe_with(study, handler)
    assert changed == set() and probe.failed == {} and probe.unknown == set()
    assert [w["message"] for w in probe.log.warnings if "Specimen" in w["message"]] == [
        "the server refuses the Specimen change search (400): a Specimen change alone is picked up by the next "
        "full run"]
