# `make test` and `make demo` create .venv on first use and install the package into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo lint clean tide-reference

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23"
	$(PY) -m pip install -q -e ".[test,export,bench,serve,ray]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff check vggdet tools tests benchmarks configs

demo: $(STAMP)
	$(PY) tools/demo.py

clean:
	rm -rf $(VENV) work_dirs .pytest_cache

# tests/fixtures/tide_reference.json made again: the TIDE authors' numbers (tidecv) that tests/test_analysis.py
# compares with. In a throwaway venv, never .venv: tidecv requires opencv-python, which must not sit beside the
# headless OpenCV we use (pip reports the conflict as an ERROR). Needs ../shared/data/coco128.
TIDE_VENV ?= /tmp/vggdet-tide-venv
tide-reference:
	rm -rf $(TIDE_VENV) && $(PYTHON) -m venv $(TIDE_VENV)
	$(TIDE_VENV)/bin/python -m pip install -q -e ".[test]" "tidecv==1.0.1"
	$(TIDE_VENV)/bin/python tests/fixtures/make_tide_reference.py
	rm -rf $(TIDE_VENV)
