# fhir-adapter — two commands from a clean clone: `make demo` and `make test`.
# Needs only Python >= 3.11 and make; everything else is installed here (CI runs on a fresh clone).

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
DEMO    := demo
SUBJECTS ?= 34
SEED    ?= 7

.PHONY: demo test lint typecheck unit install install-test bench clean constraints audit java

# --- environment -------------------------------------------------------------------------------
CONSTRAINTS := constraints.txt

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e .
	@# an editable install compiles nothing: write the package's bytecode now (a run and the workers' forkserver
	@# then import it instead of compiling every module, also where PYTHONDONTWRITEBYTECODE is set)
	$(BIN)/python -m compileall -q fhir_adapter
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml $(CONSTRAINTS)
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[test,spark]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# pin what the tests passed with (after changing dependencies in pyproject.toml): SECURITY.md
constraints: install-test
	{ echo "# Every dependency at the version the test suite passed with (pip install -c constraints.txt)."; \
	  echo "# Regenerate after a dependency change: make constraints"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^fhir[-_]adapter'; } > $(CONSTRAINTS)

# known vulnerabilities in the pinned dependencies; needs the PyPI/OSV vulnerability service (not in `make test`)
audit: install
	$(BIN)/python -m pip install -q pip-audit
	$(BIN)/pip-audit --strict --no-deps --disable-pip -r $(CONSTRAINTS)

# the real FHIR R4 server the integration tests start on 127.0.0.1 (Medplum router, from the npm registry)
FHIR_SERVER_DIR := tests/fhir_server
.PHONY: fhir-test-server browser
fhir-test-server: $(FHIR_SERVER_DIR)/node_modules/.package-lock.json

$(FHIR_SERVER_DIR)/node_modules/.package-lock.json: $(FHIR_SERVER_DIR)/package.json $(FHIR_SERVER_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is needed for the test FHIR server (Node.js >= 20)"; exit 1; }
	cd $(FHIR_SERVER_DIR) && npm ci --no-audit --no-fund
	@touch $@

# Debian's chromium for the report's headless-browser test (never a downloaded browser build)
browser:
	@command -v chromium >/dev/null || { \
	  echo "installing chromium (Debian package) for the report browser test"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# --- the main job on the embedded synthetic trial ----------------------------------------------
demo: install
	$(BIN)/fhir-adapter synth --subjects $(SUBJECTS) --seed $(SEED) --out $(DEMO)/feed
	@# exit code 2 = completed with quarantined input (the synthetic feed carries deliberate EHR irregularities)
	$(BIN)/fhir-adapter run --source $(DEMO)/feed --out $(DEMO)/out; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 2 ]
	$(BIN)/fhir-adapter report --results $(DEMO)/out
	@echo
	@echo "Results:   $(DEMO)/out/results/study.json"
	@echo "CRFs:      $(DEMO)/out/crf/<subject>.json"
	@echo "Write-back bundles (FHIR transaction per subject): $(DEMO)/out/writeback/"
	@echo "Run report (counts, warnings, quarantine, coverage): $(DEMO)/out/run-report.json"
	@echo "CDISC exports (CSV per domain, ODM 1.3.2): $(DEMO)/out/export/"
	@echo "Study report (open in a browser): $(DEMO)/out/report/index.html"
	@echo "Review the picked values: $(BIN)/fhir-adapter review --results $(DEMO)/out   (docs/review.md)"

# --- tests ----------------------------------------------------------------------------------------
# ruff, and the architecture contracts of pyproject.toml [tool.importlinter] (docs/architecture.md)
lint: install-test
	$(BIN)/ruff check fhir_adapter tests benchmarks
	$(BIN)/lint-imports

typecheck: install-test
	$(BIN)/mypy --strict fhir_adapter tests

# in one process per core, at most 4 (pytest-xdist; each process starts its own FHIR server when it needs one);
# PYTEST_WORKERS=0 runs the suite in this process
PYTEST_WORKERS ?= auto
unit: install-test fhir-test-server browser java
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --maxprocesses 4

# Java 17+ for the Spark engine's tests (pyspark starts a local JVM)
java:
	@command -v java >/dev/null || { echo "Java 17+ is needed for the Spark tests (run --engine spark): install" \
	  "it, e.g. 'sudo apt-get install -y openjdk-17-jre-headless' (Debian/Ubuntu) or 'brew install openjdk@17'," \
	  "or set JAVA_HOME"; exit 1; }

test: lint typecheck unit

bench: install
	$(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf $(DEMO) .pytest_cache .mypy_cache .ruff_cache
