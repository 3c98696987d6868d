# The single entry point: `make run` (the main job) and `make test`.
PYTHON ?= python3

.PHONY: setup run test lint bench fixtures

setup:
	$(PYTHON) -m pip install -q -e '.[dev]'

# A two-node cluster on loopback with the embedded broker: 1000 TCP flows, the
# active killed; report in ctlab-report/ (report.html, report.json).
run: setup
	ctlab run scenarios/library/failover-basic.yaml

lint:
	ruff check node syncbus scenarios tests
	mypy

# --durations: the slowest tests, to keep a CI run (.ci/run) under 30 minutes
test: lint
	$(PYTHON) -m pytest -q --durations=25

bench:
	ctlab bench all

# Re-record the kernel fixtures (root; needs ../shared/tools/kernel_oracle).
fixtures:
	for f in tests/fixtures/oracle/cases/*.json; do \
	  $(PYTHON) ../shared/tools/kernel_oracle/oracle.py run $$f \
	    --out tests/fixtures/oracle/results/$$(basename $$f) || exit 1; \
	done
