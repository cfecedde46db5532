"""FHIR R4 means 4.0.1: the resource type list is R4's, not R4B's."""

from __future__ import annotations

import pytest

from fhir_adapter.fhir.r4 import is_r4_type, r4_problem
from fhir_adapter.fhir.r4_types import R4_RESOURCE_TYPES


@pytest.mark.parametrize("rtype", ["MedicinalProduct", "EffectEvidenceSynthesis", "RiskEvidenceSynthesis",
                                   "SubstanceSpecification", "MedicinalProductAuthorization", "CatalogEntry",
                                   "Observation", "ResearchSubject", "Media", "DeviceUseStatement"])
def test_r4_types_are_r4(rtype: str) -> None:
    assert is_r4_type(rtype)


@pytest.mark.parametrize("rtype", ["Citation", "SubscriptionTopic", "SubscriptionStatus", "Ingredient",
                                   "AdministrableProductDefinition", "NutritionProduct", "EvidenceReport",
                                   "RegulatedAuthorization", "Observaton", "Resource", "DomainResource"])
def test_r4b_only_and_unknown_types_are_not_r4(rtype: str) -> None:
    assert not is_r4_type(rtype)
    assert r4_problem({"resourceType": rtype, "id": "x"}) == f"'{rtype}' is not a FHIR R4 resource type"


def test_the_list_has_every_r4_resource() -> None:
    assert len(R4_RESOURCE_TYPES) == 146


def test_an_r4_only_type_is_accepted_and_a_common_type_still_parsed() -> None:
    assert r4_problem({"resourceType": "MedicinalProduct", "id": "mp1"}) is None
    assert r4_problem({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}) is None
    problem = r4_problem({"resourceType": "Observation", "code": {"text": "x"}})
    assert problem is not None and "status" in problem
