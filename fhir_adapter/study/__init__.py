"""Study configuration: ``mappings/<study>/`` read into a checked :class:`~fhir_adapter.study.load.Study`
(``load.py``), the models of what its files may say (``models.py``), and study days (``timeline.py``)."""
