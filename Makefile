# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing and installs the project with every extra.
# `make test PYTEST_ARGS="-x -k keys"` passes extra arguments to pytest.
PYTHON ?= python3
VENV   ?= .venv
PYTEST_ARGS ?=
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.patchveil-installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[all]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf demo-out .pytest_cache
