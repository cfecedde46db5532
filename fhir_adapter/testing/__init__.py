"""Helpers to try the adapter against a real FHIR server, shared by the test suite and the benchmarks:
:mod:`.fhir_server` starts the source checkout's local FHIR R4 test server, :mod:`.feed_loader` loads a
synthetic feed (``fhir-adapter synth``) into any FHIR server, :mod:`.outtree` compares two OUT folders
without what legitimately differs between runs. Nothing in the adapter itself imports this package."""
