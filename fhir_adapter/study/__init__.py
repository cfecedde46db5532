"""Study configuration: ``mappings/<study>/`` read into a checked :class:`Study`."""

from fhir_adapter.study.load import Study, load_study
from fhir_adapter.study.yamlfile import MappingError

__all__ = ["MappingError", "Study", "load_study"]
