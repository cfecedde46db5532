"""CDISC ODM 1.3.2 export (``OUT/export/odm.xml``): metadata and document built with odmlib.

* **MetaDataVersion** (odmlib object model) — one StudyEventDef per scheduled visit (``SE.<visit>``), a
  repeating ``SE.UNS`` for unscheduled visits and a common ``SE.SUBJECT`` event holding the subject-level
  forms (DM, EX, CM, AE); one FormDef and one ItemGroupDef per domain (``F.LB``, ``IG.LB``); one ItemDef per
  export column (``IT.LB.LBORRES``) with its ODM DataType — ``partialDate``/``partialDatetime`` wherever a
  date may be partial, so ``2024-03`` stays ``2024-03`` (never imputed) — also for the columns the ODM context
  states (STUDYID, USUBJID, VISIT, the test name …): no ItemGroupDef refers to those and no ItemData carries
  them, but the Dataset-JSON columns do (``itemOID``); the ``--TESTCD`` values as CodeLists; the CRF
  units as MeasurementUnits referenced by ``--STRESN``, named by the CDISC UNIT term the CSV's ``--STRESU``
  holds (``mmHg``, ``10^9/L``; the UCUM code of items.yaml an Alias, :func:`measurement_units`).
* **ClinicalData** — one SubjectData per subject, an ItemGroupData per export row (repeat key: ``--TESTCD`` for
  findings — ``--TESTCD.<id>`` for a second row of the test in one form, e.g. a NOT DONE record beside a value,
  with the id of the resource it came from, so the key is unique within the form and stable from one export to
  the next — ``--SEQ`` otherwise) with an ItemData per non-empty column: the values of
  the CSV files, less what the ODM context already states (study, subject and visit identifiers, the test name).
* **Review** — a findings row a reviewer decided on (docs/review.md) carries an ``AuditRecord`` (the reviewer
  as a ``User`` of ``AdminData``, the time, the reason, the decision's number in the decision file) and an
  ``Annotation`` with the review status; every findings row has the status as ItemData ``REVSTAT``.

The file is written as it goes: each subject's SubjectData is serialised to a side file as soon as its CRF
exists, after a first head (ODM root and Study metadata by odmlib, a provisional time), and
:meth:`OdmWriter.close` writes the final head over the first one and renames the file (the subjects are copied
after the final head only when it is longer: reviewers' AdminData), so memory does not grow with the number of
subjects and the subjects are written once. SubjectData is written as XML text with the ODM element names rather
than through odmlib objects: odmlib's per-attribute descriptors and serialiser cost ~0.5 s per subject of
the synthetic trial (half of the whole run, 30 minutes for 3,400 subjects); the schema validation in the
tests checks that both parts together form a valid ODM 1.3.2 document, against the ODM 1.3.2 XML schema
shipped with odmlib (:func:`validate`).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from xml.sax.saxutils import escape, quoteattr

import odmlib.odm_1_3_2.model as ODM
from odmlib import schema_manager

from fhir_adapter.export.cdisc import COLUMNS, DOMAIN_LABELS, DOMAINS, FINDINGS_DOMAINS, codelist, data_type, testcd_map
from fhir_adapter.export.ct import load_terminology
from fhir_adapter.export.labels import label
from fhir_adapter.export.sanitize import xml_plain, xml_text
from fhir_adapter.export.table import Table, table
from fhir_adapter.study.load import Study
from fhir_adapter.version import __version__

SUBJECT_EVENT = "SE.SUBJECT"
UNSCHEDULED_EVENT = "SE.UNS"
#: repeat key of the unscheduled event holding rows in no visit (a NOT DONE outside every window); a baseline
#: result in no visit has its own key (``NO-VISIT-<date>``, export/cdisc.py)
NO_VISIT = "NO-VISIT"
SUBJECT_FORMS = ("DM", "EX", "CM", "AE", "MH", "PR")
MDV_OID = "MDV.1"
REVIEW_LOCATION = "LOC.REVIEW"
#: the ODM root's time in the head written first (as long as the time of close(), which replaces it)
_PROVISIONAL_TIME = "0001-01-01T00:00:00+00:00"
_IN_CONTEXT = ("STUDYID", "DOMAIN", "USUBJID", "SUBJID", "SITEID", "VISIT", "VISITNUM", "VISITDY")


def _odm_columns(domain: str) -> tuple[str, ...]:
    """Export columns carried as ItemData: what the ODM context (Study, SubjectData, StudyEventData, the
    --TESTCD CodeList) already says is left out; DM keeps the subject identifiers."""
    if domain == "DM":
        return tuple(c for c in COLUMNS[domain] if c not in ("STUDYID", "DOMAIN"))
    return tuple(c for c in COLUMNS[domain] if c not in _IN_CONTEXT and c != f"{domain}TEST")


ODM_COLUMNS = {d: _odm_columns(d) for d in DOMAINS}


def schema_path() -> Path:
    """The ODM 1.3.2 XML schema (``ODM1-3-2.xsd``) as distributed in the odmlib package."""
    return Path(schema_manager.get_schema_path("odm", "1.3.2"))


def validate(path: Path) -> None:
    """Validate ``path`` against the ODM 1.3.2 schema; raises ``xmlschema.XMLSchemaValidationError``."""
    import xmlschema

    xmlschema.XMLSchema(str(schema_path())).validate(str(path))


def _text(text: str) -> Any:
    return ODM.Description(TranslatedText=[ODM.TranslatedText(_content=text, lang="en")])


def _xml(text: str) -> str:
    """Element text: escaped, without the characters XML 1.0 forbids."""
    return escape(xml_text(text)[0])


def _unit_oid(i: int) -> str:
    return f"MU.{i}"


@dataclass(frozen=True)
class Unit:
    """A CRF unit as an ODM MeasurementUnit: its OID, the CDISC UNIT term the CSV's ``--STRESU`` holds (its Name
    and Symbol) and the UCUM code of items.yaml (an ``Alias`` in the context ``UCUM``)."""

    oid: str
    term: str
    ucum: str


def measurement_units(study: Study) -> list[Unit]:
    """The CRF units of items.yaml as MeasurementUnits: OIDs ``MU.1``, ``MU.2`` … in the order of the UCUM codes
    (stable whatever the CT release), named by their CDISC UNIT term (:mod:`fhir_adapter.export.ct`). A unit
    without a term is left out: ``--STRESU`` is empty for it, and the run report lists it under
    ``cdisc.no_ct_term``."""
    ct = load_terminology()
    units = sorted({it.unit for it in study.items.values() if it.unit})
    out = []
    for i, ucum in enumerate(units, start=1):
        term = ct.codelists["UNIT"].lookup(ucum)
        if term is not None:
            out.append(Unit(oid=_unit_oid(i), term=term, ucum=ucum))
    return out


def unit_oid_map(study: Study) -> dict[str, str]:
    """CDISC UNIT term (as ``--STRESU`` holds it) → MeasurementUnit OID; a term two UCUM codes share gives the
    OID of the first."""
    oids: dict[str, str] = {}
    for unit in measurement_units(study):
        oids.setdefault(unit.term, unit.oid)
    return oids


def _item_def(study: Study, domain: str, column: str, by_ucum: dict[str, str], used_codelists: set[str]) -> Any:
    """The ItemDef of one export column (``IT.LB.LBORRES``): its ODM DataType, its label, the CT CodeList
    (recorded in ``used_codelists``), the --TESTCD CodeList, the MeasurementUnits of --STRESN."""
    item = ODM.ItemDef(OID=f"IT.{domain}.{column}", Name=column, DataType=data_type(column),
                       Description=_text(label(domain, column)))
    ct_list = codelist(column)
    if ct_list is not None:
        item.CodeListRef = ODM.CodeListRef(CodeListOID=f"CL.{ct_list}")
        used_codelists.add(ct_list)
    if len(column) <= 8:
        item.SASFieldName = column
    if column == f"{domain}TESTCD":
        item.CodeListRef = ODM.CodeListRef(CodeListOID=f"CL.{domain}TESTCD")
    if column == f"{domain}STRESN":
        domain_units = {it.unit for it in study.items.values() if it.domain == domain and it.unit}
        item.MeasurementUnitRef = [
            ODM.MeasurementUnitRef(MeasurementUnitOID=by_ucum[u]) for u in sorted(domain_units) if u in by_ucum
        ]
    return item


def metadata(study: Study) -> tuple[Any, dict[str, str]]:
    """The odmlib ``Study`` (GlobalVariables, BasicDefinitions, MetaDataVersion) and the unit term → OID map."""
    units = measurement_units(study)
    unit_oids = unit_oid_map(study)
    by_ucum = {u.ucum: u.oid for u in units}
    basic = ODM.BasicDefinitions(MeasurementUnit=[
        ODM.MeasurementUnit(OID=u.oid, Name=u.term,
                            Symbol=ODM.Symbol(TranslatedText=[ODM.TranslatedText(_content=u.term)]),
                            Alias=[ODM.Alias(Context="UCUM", Name=u.ucum)])
        for u in units
    ])
    mdv = ODM.MetaDataVersion(OID=MDV_OID, Name=f"{study.info.id} CRF export",
                              Description=f"fhir-adapter {__version__} EHR-to-EDC export of {study.info.id}")
    visits = study.schedule.visits
    mdv.Protocol = ODM.Protocol(StudyEventRef=[
        ODM.StudyEventRef(StudyEventOID=SUBJECT_EVENT, OrderNumber=1, Mandatory="Yes"),
        *(ODM.StudyEventRef(StudyEventOID=f"SE.{v.id}", OrderNumber=i, Mandatory="No")
          for i, v in enumerate(visits, start=2)),
        ODM.StudyEventRef(StudyEventOID=UNSCHEDULED_EVENT, OrderNumber=len(visits) + 2, Mandatory="No"),
    ])
    findings_refs = [ODM.FormRef(FormOID=f"F.{d}", OrderNumber=i, Mandatory="No")
                     for i, d in enumerate(FINDINGS_DOMAINS, start=1)]
    mdv.StudyEventDef.append(ODM.StudyEventDef(
        OID=SUBJECT_EVENT, Name="Subject", Repeating="No", Type="Common",
        FormRef=[ODM.FormRef(FormOID=f"F.{d}", OrderNumber=i, Mandatory="No")
                 for i, d in enumerate(SUBJECT_FORMS, start=1)]))
    for v in visits:
        mdv.StudyEventDef.append(ODM.StudyEventDef(
            OID=f"SE.{v.id}", Name=v.label or v.id, Repeating="No", Type="Scheduled",
            Description=_text(f"target study day {v.day}, window {v.window[0]}..{v.window[1]}"),
            FormRef=list(findings_refs)))
    mdv.StudyEventDef.append(ODM.StudyEventDef(
        OID=UNSCHEDULED_EVENT, Name="Unscheduled", Repeating="Yes", Type="Unscheduled",
        Description=_text("results outside every visit window of items listed under unscheduled_items"),
        FormRef=[ODM.FormRef(FormOID=f"F.{d}", OrderNumber=i, Mandatory="No")
                 for i, d in enumerate(FINDINGS_DOMAINS, start=1)]))
    testcd = testcd_map(study)
    used_codelists: set[str] = set()
    for domain in DOMAINS:
        mdv.FormDef.append(ODM.FormDef(
            OID=f"F.{domain}", Name=DOMAIN_LABELS[domain], Repeating="No",
            ItemGroupRef=[ODM.ItemGroupRef(ItemGroupOID=f"IG.{domain}", OrderNumber=1, Mandatory="No")]))
        mdv.ItemGroupDef.append(ODM.ItemGroupDef(
            OID=f"IG.{domain}", Name=DOMAIN_LABELS[domain], Repeating="No" if domain == "DM" else "Yes",
            SASDatasetName=domain, Domain=domain, Purpose="Tabulation",
            ItemRef=[ODM.ItemRef(ItemOID=f"IT.{domain}.{c}", OrderNumber=i,
                                 Mandatory="Yes" if c in ("USUBJID", f"{domain}TESTCD") else "No")
                     for i, c in enumerate(ODM_COLUMNS[domain], start=1)]))
        # every export column, also those the ODM context states (no ItemRef, no ItemData): the Dataset-JSON
        # columns of the domain refer to them by OID (dataset_json.columns)
        for column in COLUMNS[domain]:
            mdv.ItemDef.append(_item_def(study, domain, column, by_ucum, used_codelists))
    for domain in FINDINGS_DOMAINS:
        mdv.CodeList.append(ODM.CodeList(
            OID=f"CL.{domain}TESTCD", Name=f"{domain} test codes", DataType="text",
            CodeListItem=[
                ODM.CodeListItem(CodedValue=testcd[k], Decode=ODM.Decode(
                    TranslatedText=[ODM.TranslatedText(_content=it.label, lang="en")]))
                for k, it in study.items.items() if it.domain == domain
            ]))
    ct = load_terminology()
    for name in sorted(used_codelists):
        cl = ct.codelists[name]
        mdv.CodeList.append(ODM.CodeList(
            OID=f"CL.{name}", Name=f"{name} ({ct.package})", DataType="text",
            EnumeratedItem=[ODM.EnumeratedItem(CodedValue=t, Alias=[ODM.Alias(Context="nci:ExtCodeID", Name=cl.nci[t])]
                                               if t in cl.nci else []) for t in cl.terms],
            Alias=[ODM.Alias(Context="nci:ExtCodeID", Name=cl.code)]))
    gv = ODM.GlobalVariables(
        StudyName=ODM.StudyName(_content=study.info.id),
        StudyDescription=ODM.StudyDescription(_content=study.info.name or study.info.id),
        ProtocolName=ODM.ProtocolName(_content=study.info.id),
    )
    return ODM.Study(OID=f"ST.{study.info.id}", GlobalVariables=gv, BasicDefinitions=basic,
                     MetaDataVersion=[mdv]), unit_oids


class _FormSpec:
    """What writing a domain's rows as ItemGroupData needs, worked out once: the ItemData text before each
    value (by the cell's position in ``COLUMNS[domain]``), the repeat key's cell, --STRESN and --STRESU."""

    def __init__(self, domain: str) -> None:
        columns = COLUMNS[domain]
        at = {c: i for i, c in enumerate(columns)}
        stresn = f"{domain}STRESN"
        items = [(at[c], f'<ItemData ItemOID="IT.{domain}.{c}" Value="') for c in ODM_COLUMNS[domain]]
        split = next((n for n, c in enumerate(ODM_COLUMNS[domain]) if c == stresn), len(items))
        self.before, self.after = items[:split], items[split + 1:]
        self.stresn = at[stresn] if split < len(items) else None
        self.stresu = at.get(f"{domain}STRESU")
        self.stresn_oid = f"IT.{domain}.{stresn}"
        #: every ItemData column with its cell's position (rows that are not plain), and REVSTAT's
        self.columns = [(at[c], c) for c in ODM_COLUMNS[domain]]
        self.revstat = at.get("REVSTAT")
        self.key = None if domain == "DM" else at[f"{domain}TESTCD" if domain in FINDINGS_DOMAINS else f"{domain}SEQ"]
        self.seq = at.get(f"{domain}SEQ")
        self.srcref = at.get("SRCREF")
        self.group = f'<ItemGroupData ItemGroupOID="IG.{domain}"'
        self.domain = domain


class OdmSubjects:
    """One subject's SubjectData as XML text (:meth:`render`), wherever the subject is processed."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.unit_oids = unit_oid_map(study)
        self.scheduled = {v.id for v in study.schedule.visits}
        self._removed = 0
        self.reviewers: dict[str, str] = {}  # reviewer name → User OID (AdminData)
        self._specs = {d: _FormSpec(d) for d in DOMAINS}

    def _attr(self, text: str) -> str:
        """A quoted attribute value without the characters XML 1.0 forbids (counted)."""
        if xml_plain(text):
            return f'"{text}"'
        clean, n = xml_text(text)
        self._removed += n
        return quoteattr(clean)

    def render(self, subject_id: str, rows: dict[str, list[dict[str, Any]]] | dict[str, Table]) -> tuple[str, int]:
        """One subject's SubjectData from its export rows (:meth:`RowBuilder.rows`, or their tables), and how
        many characters XML 1.0 forbids were removed from its text. Reviewer OIDs are numbered in the order
        reviewers first appear, so rows carrying a reviewer's decision are rendered by the run's own
        :class:`OdmWriter`."""
        domains = {d: r if isinstance(r, Table) else table(d, r) for d, r in rows.items()}
        self._removed = 0
        out: list[str] = [f'<SubjectData SubjectKey={self._attr(subject_id)} TransactionType="Insert">',
                          f'<StudyEventData StudyEventOID="{SUBJECT_EVENT}">']
        for domain in SUBJECT_FORMS:
            t = domains.get(domain)
            if t is not None and t.cells:
                self._form(out, t, range(len(t.cells)))
        out.append("</StudyEventData>")
        by_visit: dict[str, dict[str, list[int]]] = {}
        for domain in FINDINGS_DOMAINS:
            if (t := domains.get(domain)) is not None:
                for i, visit in enumerate(t.visits):
                    by_visit.setdefault(visit, {}).setdefault(domain, []).append(i)
        for visit, forms in by_visit.items():
            if visit in self.scheduled:
                out.append(f"<StudyEventData StudyEventOID={self._attr('SE.' + visit)}>")
            else:
                out.append(f'<StudyEventData StudyEventOID="{UNSCHEDULED_EVENT}" '
                           f"StudyEventRepeatKey={self._attr(visit or NO_VISIT)}>")
            for d in FINDINGS_DOMAINS:
                if d in forms:
                    self._form(out, domains[d], forms[d])
            out.append("</StudyEventData>")
        out.append("</SubjectData>\n")
        return "".join(out), self._removed

    @staticmethod
    def _second_key(key: str, cells: Sequence[Any], spec: _FormSpec, keys: set[str]) -> str:
        """A unique repeat key for a second row of a test in one form that stays the same from one export to
        the next: the test code and the id of the resource the row came from (``SRCREF``), else its ``--SEQ``."""
        ref = str(cells[spec.srcref] or "") if spec.srcref is not None else ""
        rid = ref.split("/_history/")[0].rpartition("/")[2]
        if rid and f"{key}.{rid}" not in keys:
            return f"{key}.{rid}"
        n = cells[spec.seq] if spec.seq is not None else len(keys)
        while f"{key}.{n}" in keys:  # never a key already used (a numeric resource id equal to a SEQ)
            n = f"{n}.1"
        return f"{key}.{n}"

    def _form(self, out: list[str], t: Table, indices: Iterable[int]) -> None:
        domain = t.domain
        spec = self._specs[domain]
        out.append(f'<FormData FormOID="F.{domain}">')
        findings = domain in FINDINGS_DOMAINS
        keys: set[str] = set()
        for i in indices:
            cells = t.cells[i]
            if spec.key is None:
                out.append(spec.group + ">")
            else:
                key = str(cells[spec.key])  # a plain row's cells are their own attribute values (:meth:`_attr`)
                if key in keys:  # a second row of the test in this form (a NOT DONE record beside a value)
                    key = self._second_key(key, cells, spec, keys)
                keys.add(key)
                out.append(f'{spec.group} ItemGroupRepeatKey="{key}">' if t.plain[i] else
                           f'{spec.group} ItemGroupRepeatKey={self._attr(key)}>')
                if findings and (decision := t.decisions[i]):
                    status = cells[spec.revstat] if spec.revstat is not None else ""
                    out.append(self._review(decision, str(status or "")))
            if not t.plain[i]:
                self._items(out, spec, cells)
                out.append("</ItemGroupData>")
                continue
            out += [pre + v + '"/>' for n, pre in spec.before if (v := cells[n])]
            if spec.stresn is not None and (v := cells[spec.stresn]):
                unit = self.unit_oids.get(cells[spec.stresu] or "") if spec.stresu is not None else None
                out.append(f'<ItemData ItemOID="{spec.stresn_oid}" Value="{v}"><MeasurementUnitRef '
                           f'MeasurementUnitOID="{unit}"/></ItemData>' if unit else
                           f'<ItemData ItemOID="{spec.stresn_oid}" Value="{v}"/>')
            out += [pre + v + '"/>' for n, pre in spec.after if (v := cells[n])]
            out.append("</ItemGroupData>")
        out.append("</FormData>")

    def _items(self, out: list[str], spec: _FormSpec, cells: Sequence[Any]) -> None:
        """The ItemData of a row that is not plain, value by value (forbidden characters removed, counted)."""
        for at, column in spec.columns:
            value = cells[at]
            if value is None or value == "":
                continue
            unit = self.unit_oids.get((cells[spec.stresu] if spec.stresu is not None else None) or "") \
                if at == spec.stresn else None
            attrs = f'ItemOID="IT.{spec.domain}.{column}" Value={self._attr(str(value))}'
            out.append(f'<ItemData {attrs}><MeasurementUnitRef MeasurementUnitOID="{unit}"/></ItemData>' if unit
                       else f"<ItemData {attrs}/>")

    def _review(self, d: dict[str, Any], status: str) -> str:
        """The reviewer's decision on a findings row: an AuditRecord (who, when, why) and an Annotation
        (the review status and the decision)."""
        user = self.reviewers.setdefault(d["reviewer"], f"USR.REVIEW.{len(self.reviewers) + 1}")
        why = d.get("reason") or {"accept": "accepted the value picked by the rule",
                                   "choose": f"chose {d.get('candidate')}"}.get(d["action"], d["action"])
        what = f"review status {status}: {d['action']}" + (f" {d['candidate']}" if d.get("candidate") else "")
        if d.get("open_query"):
            what += f"; open query: {d['open_query'].get('reason', '')}"
        return (f'<AuditRecord EditPoint="DataManagement" UsedImputationMethod="No">'
                f'<UserRef UserOID="{user}"/><LocationRef LocationOID="{REVIEW_LOCATION}"/>'
                f"<DateTimeStamp>{escape(str(d['at']))}</DateTimeStamp>"
                f"<ReasonForChange>{_xml(why)}</ReasonForChange>"
                f"<SourceID>review-decisions.jsonl#{escape(str(d.get('seq')))}</SourceID>"
                f"</AuditRecord>"
                f'<Annotation SeqNum="1"><Comment SponsorOrSite="Site">{_xml(what)}</Comment></Annotation>')


class OdmWriter(OdmSubjects):
    """Streams SubjectData to ``<path>.part`` after a first head, which becomes ``path`` on :meth:`close`."""

    def __init__(self, path: Path, study: Study) -> None:
        super().__init__(study)
        self.path = Path(path)
        self._study_xml, self.unit_oids = metadata(study)
        self._part_path = self.path.with_name(self.path.name + ".part")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._part = self._part_path.open("wb")
        self._root = self._root_xml()
        # the head as it reads without reviewers, its time provisional, of the same length: the subjects follow
        # it in the file that becomes odm.xml, the head of close() overwrites it when it has the same length
        self._first_head = self._head(_PROVISIONAL_TIME)
        self._part.write(self._first_head)
        self.subjects = 0
        #: subject ID -> characters XML 1.0 forbids that were removed from that subject's text
        self.removed: dict[str, int] = {}

    def add(self, subject_id: str, rows: dict[str, list[dict[str, Any]]] | dict[str, Table]) -> None:
        """Append one subject, from its export rows (:meth:`RowBuilder.rows`) or their tables."""
        self.write(subject_id, *self.render(subject_id, rows))

    def write(self, subject_id: str, xml: str, removed: int) -> None:
        """Append one subject's SubjectData rendered by :meth:`render` (here or in a worker)."""
        self.subject_file(subject_id, removed).write(xml.encode("utf-8"))

    def subject_file(self, subject_id: str, removed: int) -> IO[bytes]:
        """The file one subject's SubjectData is appended to (counted here, with ``removed`` characters XML
        forbids): :meth:`write`, or the export writer's copy of a worker's text."""
        self.subjects += 1
        if removed:
            self.removed[subject_id] = self.removed.get(subject_id, 0) + removed
        return self._part

    def _admin_data(self) -> str:
        """Users (reviewers) and the review Location the AuditRecords refer to."""
        if not self.reviewers:
            return ""
        sid = quoteattr(f"ST.{self.study.info.id}")
        users = "".join(f"<User OID={quoteattr(oid)}><LoginName>{_xml(name)}</LoginName></User>"
                        for name, oid in self.reviewers.items())
        location = (f'<Location OID="{REVIEW_LOCATION}" Name="fhir-adapter review" LocationType="Site">'
                    f'<MetaDataVersionRef StudyOID={sid} MetaDataVersionOID="{MDV_OID}" '
                    f'EffectiveDate="{dt.date.today().isoformat()}"/></Location>')
        return f"<AdminData StudyOID={sid}>{users}{location}</AdminData>\n"

    def _root_xml(self) -> str:
        """The ODM root with the Study metadata and an empty ClinicalData, :data:`_PROVISIONAL_TIME` its time."""
        root = ODM.ODM(
            FileType="Snapshot", Granularity="All", FileOID=f"FA.{self.study.info.id}.{_PROVISIONAL_TIME}",
            CreationDateTime=_PROVISIONAL_TIME, ODMVersion="1.3.2", Originator="fhir-adapter",
            SourceSystem="fhir-adapter", SourceSystemVersion=__version__,
        )
        root.Study = [self._study_xml]
        root.ClinicalData = [
            ODM.ClinicalData(StudyOID=f"ST.{self.study.info.id}", MetaDataVersionOID=MDV_OID)
        ]
        return str(root.to_xml_string(xml_declaration=True))

    def _head(self, now: str) -> bytes:
        """What precedes the first SubjectData: the ODM root created at ``now``, the Study metadata, AdminData
        (the reviewers met so far) and the ClinicalData start tag."""
        text = self._root.replace(_PROVISIONAL_TIME, now, 2)  # FileOID and CreationDateTime: the root's attributes
        marker = text.rfind("<ClinicalData ")
        end = text.index("/>", marker)
        return (text[:marker] + self._admin_data() + text[marker:end].rstrip() + ">\n").encode("utf-8")

    def _tail(self) -> bytes:
        """What follows the last SubjectData: the end tags of ClinicalData and the ODM root."""
        text = self._root
        return ("</ClinicalData>" + text[text.index("/>", text.rfind("<ClinicalData ")) + 2:]).encode("utf-8")

    def close(self) -> Path:
        """Write ``odm.xml``: ODM root, Study metadata, ClinicalData holding the streamed subjects. The subjects
        stay where they were written when the final head has the length of the first one (no reviewers), else
        they are copied after it."""
        head = self._head(dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat())
        self._part.write(self._tail())
        if len(head) == len(self._first_head):
            self._part.seek(0)
            self._part.write(head)
            self._part.close()
            os.replace(self._part_path, self.path)
            return self.path
        self._part.close()
        with self.path.open("wb") as out, self._part_path.open("rb") as part:
            out.write(head)
            part.seek(len(self._first_head))
            shutil.copyfileobj(part, out)
        self._part_path.unlink()
        return self.path
