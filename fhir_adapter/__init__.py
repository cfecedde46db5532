"""fhir-adapter: connects a hospital EHR to a clinical trial over HL7 FHIR R4.

Data flow (one direction, every stage testable alone)::

    source -> roster -> mapping -> crf -> derive -> results -> writeback / exports / report
"""

__version__ = "0.1.0"
