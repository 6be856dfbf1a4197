# sepmeasure: `make report` runs every study in quick mode and writes reports/quick/;
# `make test` runs the test suite. Both install into .venv first if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test report docs bench peers clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@if $(PY) -m pip list 2>/dev/null | grep -iqE '^(triton|nvidia-)'; then \
		echo "error: a CUDA build of torch or triton was pulled in; expected the CPU wheel torch==2.13.0" >&2; exit 1; fi
	touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

# The quick run goes to reports/quick/ (ignored by git); its index compares each verdict with the
# committed full-mode reference in reports/ (regenerate that with `sepmeasure study all --full --out reports`).
REPORT_OUT ?= reports/quick
report: install
	$(VENV)/bin/sepmeasure study all --quick --out $(REPORT_OUT)
	$(VENV)/bin/sepmeasure report $(REPORT_OUT) --reference reports

# The documentation site: mkdocs-material + mkdocstrings into build/site/; --strict makes any
# warning (a docstring griffe cannot parse, a broken link or anchor) fail the build.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The peers of benchmarks/ntk.py (neural-tangents on jax, nngeometry on torch) live in their own
# environment, never in .venv; `make bench` creates it when missing. Without it (no registry) the NTK
# benchmark says so and prints sepmeasure's columns only.
PEERS_VENV ?= .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
PEERS_STAMP := $(PEERS_VENV)/.installed
PEERS_REQ := benchmarks/peers/requirements.txt benchmarks/peers/requirements-nodeps.txt

peers: $(PEERS_STAMP)

$(PEERS_STAMP): $(PEERS_REQ)
	test -x $(PEERS_PY) || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_PY) -m pip install -q -r benchmarks/peers/requirements.txt
	$(PEERS_PY) -m pip install -q --no-deps -r benchmarks/peers/requirements-nodeps.txt
	@if $(PEERS_PY) -m pip list 2>/dev/null | grep -iqE '^(triton|nvidia-)'; then \
		echo "error: a CUDA build of torch or triton was pulled into $(PEERS_VENV);" \
			"expected the CPU wheel torch==2.13.0" >&2; exit 1; fi
	touch $(PEERS_STAMP)

bench: install
	@$(MAKE) --no-print-directory peers PEERS_VENV=$(PEERS_VENV) || \
		echo "warning: the peers' environment $(PEERS_VENV) could not be created or completed;" \
			"benchmarks/ntk.py prints sepmeasure's columns only" >&2
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; PEERS_PYTHON=$(abspath $(PEERS_PY)) $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
