# `make test` and `make demo` create .venv on first use and install the package into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo lint clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23"
	$(PY) -m pip install -q -e ".[test,export,serve]"
	# tidecv (the TIDE authors' code) is only a reference for tests/test_analysis.py; --no-deps keeps out its
	# opencv-python, which must not sit beside the headless OpenCV we use.
	$(PY) -m pip install -q --no-deps "tidecv==1.0.1" && $(PY) -m pip install -q appdirs pandas seaborn
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
