"""A live FHIR R4 server as the source (read only), in modules by job:

* ``source.py`` — :class:`ServerSource`, the :class:`~fhir_adapter.source.base.Source` that drives the rest;
* ``roster.py`` — ResearchStudy, ResearchSubject and their Patients;
* ``searches.py`` — the searches that read a subject's resources, and what of their answer is input;
* ``groups.py`` — many subjects read at once (multi-patient searches, their Specimens by patient);
* ``shared.py`` — Medication, Organization, Location, Specimen the subject's resources reference, by id;
* ``batch.py`` — those searches as one batch Bundle (``read_mode: batch``);
* ``incremental.py`` — the patients changed since the last run (``--since``).
"""

from fhir_adapter.source.server.searches import SUBJECT_SEARCHES
from fhir_adapter.source.server.source import ServerSource

__all__ = ["SUBJECT_SEARCHES", "ServerSource"]
