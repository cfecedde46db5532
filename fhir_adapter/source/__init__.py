"""Where raw FHIR JSON comes from. Every source offers the same two reads, so nothing downstream knows
which one ran: the roster resources (ResearchStudy, ResearchSubject, Patient) and then, per enrolled
patient, that patient's resources of the types the mapping needs (:class:`Source` in ``base.py``).

``files.py`` (a folder; ``layout.py``: the Bulk export layouts it reads), ``server/`` (REST searches),
``bulk.py`` (a server through a Bulk Data ``$export``, then read as a folder).
"""

from fhir_adapter.source.base import RosterInput, Source, patient_id_of
from fhir_adapter.source.files import FileSource

__all__ = ["FileSource", "RosterInput", "Source", "patient_id_of"]
