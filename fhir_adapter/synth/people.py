"""Organizations (the three sites), Patients with made-up names built from invented syllables, and the clinic
patients outside the study (:class:`ClinicPatient`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from random import Random

from .ids import ref
from .sink import Resource
from .sites import HOME_TOWNS, SITES, STREET_KINDS, STREET_STEMS

#: invented syllables: names are built from these, never taken from a list of real people's names
GIVEN_SYLLABLES: tuple[str, ...] = (
    "za", "quo", "vel", "mir", "tho", "xan", "bry", "lue", "sko", "dri", "nyv", "ova", "phe", "rix", "tal",
    "yse", "wen", "kae", "zul", "sei", "oru", "vai", "thel", "qua",
)
FAMILY_STEMS: tuple[str, ...] = (
    "Vorn", "Quell", "Brask", "Tiv", "Oxel", "Marn", "Pell", "Drax", "Ulm", "Yarr", "Zeph", "Krov",
)
FAMILY_ENDINGS: tuple[str, ...] = (
    "ovik", "quist", "andel", "elby", "marsh", "otte", "ingh", "evale", "undt", "ossa", "iquen", "arrow",
)
SID_SITE = "https://fhir-adapter.org/fhir/sid/site"
LAST_UPDATED = "2026-10-31T06:00:00Z"


@dataclass(frozen=True, slots=True)
class ClinicPatient:
    """A clinic patient outside the study (never enrolled): the feed gives them a Patient and routine data."""

    patient_id: str
    site: int
    sex: str
    birth_date: date
    seed: int


def organization(site: int, org_id: str) -> Resource:
    conv = SITES[site]
    return {
        "resourceType": "Organization", "id": org_id,
        "meta": {"versionId": "1", "lastUpdated": "2023-11-02T08:15:00Z"},
        "identifier": [{"system": SID_SITE, "value": str(site)}],
        "active": True,
        "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type",
                              "code": "prov", "display": "Healthcare Provider"}]}],
        "name": conv.hospital,
        "address": [{"city": conv.town}],
    }


def _name(rng: Random) -> tuple[str, str]:
    given = "".join(rng.choice(GIVEN_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    family = rng.choice(FAMILY_STEMS) + rng.choice(FAMILY_ENDINGS)
    return given, family


def patient(rng: Random, patient_id: str, site: int, org_id: str, sex: str, birth_date: date) -> Resource:
    given, family = _name(rng)
    mrn = f"{site}{rng.randint(0, 9_999_999):07d}"
    street = f"{rng.choice(STREET_STEMS)} {rng.choice(STREET_KINDS)} {rng.randint(1, 140)}"
    return {
        "resourceType": "Patient", "id": patient_id,
        "meta": {"versionId": "1", "lastUpdated": LAST_UPDATED},
        "identifier": [{
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
                                 "display": "Medical record number"}]},
            "system": f"https://hospital.example.org/site-{site}/mrn", "value": mrn,
        }],
        "active": True,
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": sex,
        "birthDate": birth_date.isoformat(),
        "address": [{"use": "home", "line": [street], "city": rng.choice(HOME_TOWNS),
                     "postalCode": f"{rng.randint(10000, 99999)}"}],
        "managingOrganization": {**ref("Organization", org_id), "display": SITES[site].hospital},
    }
