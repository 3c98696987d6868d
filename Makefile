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

# Everything but the whole-scenario runs, then those two at a time (pytest-xdist):
# each spends most of its wall time waiting on its scenario's clock, not on a CPU.
# Together the two marks select every test. --durations: the slowest tests, to keep
# a CI run (.ci/run) under 30 minutes.
test: lint
	$(PYTHON) -m pytest -q --durations=15 -m "not scenario"
	$(PYTHON) -m pytest -q --durations=25 -m scenario -n 2

bench:
	ctlab bench all

# Re-record the kernel fixtures (root; needs ../shared/tools/kernel_oracle).
fixtures:
	for f in tests/fixtures/oracle/cases/*.json; do \
	  $(PYTHON) ../shared/tools/kernel_oracle/oracle.py run $$f \
	    --out tests/fixtures/oracle/results/$$(basename $$f) || exit 1; \
	done
